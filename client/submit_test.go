package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// never is a poll interval that never fires within a test: a wait that ends proves the
// events arrived by NATS or webhook.
const never = time.Hour

func chatJob(model, prompt string) client.SubmitRequest {
	return client.SubmitRequest{Chat: &client.ChatRequest{Model: model, Messages: []client.Message{{Role: "user", Content: prompt}}}}
}

func wantReply(model, prompt string) string {
	return strings.Join(ollamatest.Reply(model, "user: "+prompt+"\n", 5), "")
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t *testing.T, base string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(base, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// modes are the three ways Submit waits; each proves it is the one used by polling never
// (NATS, webhook) or briskly (polling).
func modes(t *testing.T, f *foreman) map[string][]client.Option {
	return map[string][]client.Option{
		"nats":    {client.WithNATS(natsConn(t, f)), client.WithPollInterval(never)},
		"webhook": {client.WithWebhookSecret(testSecret), client.WithPollInterval(never)},
		"polling": {client.WithPollingOnly(), client.WithPollInterval(20 * time.Millisecond)},
	}
}

func TestSubmitModes(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	for name, opts := range modes(t, f) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.URL, opts...)
			var hookURL string
			client.SetOnWebhookListen(c, func(u string) { hookURL = u })
			// The job runs only once Submit has reported a first state: its one read before
			// waiting must not already find it done, or the mode under test did nothing.
			release := f.Fake.Hold("tiny-a")
			defer release()
			req := chatJob("tiny-a", "hello "+name)
			var states []client.State
			req.OnState = func(e client.Event) {
				states = append(states, e.State)
				release()
			}
			var waitErrs []error
			req.OnWaitError = func(err error) { waitErrs = append(waitErrs, err) }
			res, err := c.Submit(testCtx(t), req)
			if err != nil {
				t.Fatalf("Submit: %v (states seen %v, read errors %v)", err, states, waitErrs)
			}
			if got, want := res.Text(), wantReply("tiny-a:latest", "hello "+name); got != want {
				t.Errorf("Text() = %q, want %q", got, want)
			}
			if res.Job.State != client.StateDone || len(states) == 0 || states[len(states)-1] != client.StateDone {
				t.Errorf("job state %s, states seen %v; want ending in done", res.Job.State, states)
			}
			if cr, err := res.Chat(); err != nil || cr.Message.Role != "assistant" {
				t.Errorf("Chat() = %+v, %v", cr, err)
			}
			switch name {
			case "webhook":
				if hookURL == "" {
					t.Fatal("no webhook receiver was started")
				}
				// The receiver is gone: its port refuses connections.
				u, _ := url.Parse(hookURL)
				if conn, err := net.Dial("tcp", u.Host); err == nil {
					conn.Close()
					t.Errorf("webhook receiver %s still accepts connections after Submit", u.Host)
				}
			case "nats":
				// The first request created nats.go's shared reply subscription; another
				// Submit must leave no subscription of its own behind.
				n := c.NATS().NumSubscriptions()
				if _, err := c.Submit(testCtx(t), chatJob("tiny-a", "again")); err != nil {
					t.Fatal(err)
				}
				if m := c.NATS().NumSubscriptions(); m != n || n > 1 {
					t.Errorf("NATS subscriptions: %d after one Submit, %d after two; want at most nats.go's reply subscription", n, m)
				}
			default:
				if hookURL != "" {
					t.Errorf("polling-only client started a webhook receiver %s", hookURL)
				}
			}
		})
	}
}

func TestSubmitFailedJob(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	all := modes(t, f)
	// Ollama refuses each mode's chat with a 400 when it runs, a terminal failure.
	f.Fake.FailNextOn("/api/chat", len(all), ollamatest.FailStatus(http.StatusBadRequest, "fake: refused"))
	for name, opts := range all {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.URL, opts...)
			res, err := c.Submit(testCtx(t), chatJob("tiny-a", "hi"))
			if !errors.Is(err, client.ErrJobFailed) || errors.Is(err, client.ErrJobCanceled) {
				t.Fatalf("Submit = %v, %v; want ErrJobFailed (not canceled)", res, err)
			}
			var je *client.JobError
			if !errors.As(err, &je) || je.Job.State != client.StateFailed || je.Job.Error == "" {
				t.Fatalf("error %v: want a *JobError of a failed job with its message", err)
			}
		})
	}
}

// TestSubmitContextEnds holds a job and ends the context: Submit returns the context's
// error, and only WithCancelOnContextDone cancels the job.
func TestSubmitContextEnds(t *testing.T) {
	t.Parallel()
	for _, cancelJob := range []bool{false, true} {
		t.Run(map[bool]string{false: "keep", true: "cancel"}[cancelJob], func(t *testing.T) {
			t.Parallel()
			f := startForeman(t, foremanConfig{})
			release := f.Fake.Hold("tiny-a")
			defer release()
			opts := []client.Option{client.WithNATS(natsConn(t, f))}
			if cancelJob {
				opts = append(opts, client.WithCancelOnContextDone())
			}
			c := newClient(t, f.URL, opts...)
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			req := chatJob("tiny-a", "held")
			go func() {
				if f.Fake.WaitStarted(ctx, "tiny-a", 1) == nil {
					cancel()
				}
			}()
			_, err := c.Submit(ctx, req)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Submit = %v, want context.Canceled", err)
			}
			// The context may end before Submit learnt anything but the id: find the job.
			list, err := c.Jobs(testCtx(t), client.JobFilter{})
			if err != nil || len(list.Jobs) != 1 {
				t.Fatalf("Jobs = %+v, %v; want the one job", list, err)
			}
			id := list.Jobs[0].ID
			if cancelJob {
				waitState(t, c, id, client.StateCanceled)
				return
			}
			if j, err := c.Job(testCtx(t), id); err != nil || j.State.Terminal() {
				t.Fatalf("Job = %+v, %v; want it still running", j, err)
			}
		})
	}
}

// waitState polls until job id is in state want.
func waitState(t *testing.T, c *client.Client, id string, want client.State) {
	t.Helper()
	eventually(t, 10*time.Second, "job "+id+" "+string(want), func() bool {
		j, err := c.Job(context.Background(), id)
		if err != nil {
			t.Fatalf("Job(%s): %v", id, err)
		}
		return j.State == want
	})
}

func TestAuth(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{AuthToken: "s3cret"})
	anon := newClient(t, f.URL, client.WithPollingOnly())
	_, err := anon.Submit(testCtx(t), chatJob("tiny-a", "hi"))
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("Submit without token = %v, want *APIError 401", err)
	}
	if _, err := anon.Tags(testCtx(t)); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("Tags without token = %v, want *APIError 401", err)
	}
	c := newClient(t, f.URL, client.WithToken("s3cret"), client.WithPollInterval(20*time.Millisecond))
	res, err := c.Submit(testCtx(t), chatJob("tiny-a", "hi"))
	if err != nil || res.Text() != wantReply("tiny-a:latest", "hi") {
		t.Fatalf("Submit with token = %v, %v", res, err)
	}
}

// TestWebhookBindFailure: a receiver address that cannot be bound falls back to polling.
func TestWebhookBindFailure(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL, client.WithWebhookListenAddr("256.1.1.1:0"), client.WithPollInterval(20*time.Millisecond))
	res, err := c.Submit(testCtx(t), chatJob("tiny-a", "fallback"))
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	rec, _, err := f.Store.Get(testCtx(t), res.Job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Webhook != nil {
		t.Errorf("job has webhook %+v; want none after the bind failure", rec.Webhook)
	}
}

// TestWebhookRefusedFallsBackToPolling: foreman's default webhook policy refuses a
// loopback receiver (400 at submit); Submit then submits without a webhook and polls.
func TestWebhookRefusedFallsBackToPolling(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret, DefaultWebhookPolicy: true})
	c := newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(20*time.Millisecond))
	var hookURL string
	client.SetOnWebhookListen(c, func(u string) { hookURL = u })
	res, err := c.Submit(testCtx(t), chatJob("tiny-a", "refused receiver"))
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if res.Text() != wantReply("tiny-a:latest", "refused receiver") {
		t.Errorf("Text() = %q", res.Text())
	}
	if hookURL == "" {
		t.Fatal("no webhook receiver was started: the refusal was not exercised")
	}
	rec, _, err := f.Store.Get(testCtx(t), res.Job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Webhook != nil {
		t.Errorf("job has webhook %+v; want none after foreman refused the receiver", rec.Webhook)
	}
	if u, _ := url.Parse(hookURL); u != nil {
		if conn, err := net.Dial("tcp", u.Host); err == nil {
			conn.Close()
			t.Errorf("refused webhook receiver %s still listens", u.Host)
		}
	}
	// The client remembers the refusal: the next Submit starts no receiver.
	hookURL = ""
	if _, err := c.Submit(testCtx(t), chatJob("tiny-a", "again")); err != nil || hookURL != "" {
		t.Errorf("second Submit: %v, receiver %q; want polling at once", err, hookURL)
	}
	// A 400 about something else is still the caller's error.
	if _, err := c.Submit(testCtx(t), chatJob("", "no model")); err == nil {
		t.Error("Submit without a model succeeded")
	}
}

// TestWebhookBadSignature: with the wrong secret the receiver refuses every delivery, so
// a webhook-only wait never ends: it still waits after the job finished and foreman's
// deliveries went on being refused. (The events of a job go out in order: its done event
// waits behind the refused queued event's retries.)
func TestWebhookBadSignature(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	c := newClient(t, f.URL, client.WithWebhookSecret("whsec_"+strings.Repeat("A", 32)), client.WithPollInterval(never))
	// The job must still be running when Submit reads it once before waiting, or that
	// read alone would show it done: hold it until Submit has reported a state.
	release := f.Fake.Hold("tiny-a")
	defer release()
	ids := make(chan string, 1)
	req := chatJob("tiny-a", "forged")
	req.OnState = func(e client.Event) {
		select {
		case ids <- e.JobID:
			release()
		default:
		}
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	submitted := make(chan error, 1)
	go func() {
		_, err := c.Submit(ctx, req)
		submitted <- err
	}()
	var id string
	select {
	case id = <-ids:
	case err := <-submitted:
		t.Fatalf("Submit = %v before it reported a state", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Submit reported no state within 30s")
	}
	// The job itself finishes; foreman's deliveries of its events are still refused after.
	waitState(t, c, id, client.StateDone)
	done := time.Now()
	eventually(t, 60*time.Second, "a refused delivery of job "+id+"'s events after it finished", func() bool {
		log, err := f.Store.Deliveries(context.Background(), id)
		if err != nil {
			t.Fatalf("Deliveries(%s): %v", id, err)
		}
		after := false
		for _, a := range log {
			if a.Status != http.StatusUnauthorized {
				t.Fatalf("delivery %+v; want every one refused with 401", a)
			}
			after = after || a.At.After(done)
		}
		return after
	})
	select {
	case err := <-submitted:
		t.Fatalf("Submit = %v after a delivery was refused; want it still waiting", err)
	default:
	}
	cancel()
	if err := <-submitted; !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit = %v, want the caller's cancellation", err)
	}
}

// TestWaitFinishedJob: a job that finished before the client starts waiting is seen at once.
func TestWaitFinishedJob(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL, client.WithNATS(natsConn(t, f)), client.WithPollInterval(never))
	id, err := c.SubmitAsync(testCtx(t), chatJob("tiny-b", "early"))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, c, id, client.StateDone)
	res, err := c.Wait(testCtx(t), id)
	if err != nil || res.Text() != wantReply("tiny-b:latest", "early") {
		t.Fatalf("Wait = %v, %v", res, err)
	}
}

// TestNATSURL: a client that dials NATS itself owns the connection and closes it.
func TestNATSURL(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	var (
		c   *client.Client
		err error
	)
	for range 5 { // see natsConn
		if c, err = client.New(f.URL, client.WithNATSURL(f.NATSURL, natsAuth...), client.WithPollInterval(never)); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Submit(testCtx(t), chatJob("tiny-a", "own conn"))
	if err != nil || res.Text() != wantReply("tiny-a:latest", "own conn") {
		t.Fatalf("Submit = %v, %v", res, err)
	}
	nc := c.NATS()
	if err := c.Close(); err != nil || !nc.IsClosed() {
		t.Fatalf("Close = %v; connection closed: %v", err, nc.IsClosed())
	}
	if _, err := client.New(f.URL, client.WithNATSURL("nats://127.0.0.1:1")); err == nil {
		t.Fatal("New with an unreachable NATS URL succeeded")
	}
}

// eventually checks cond at once and then every 10ms until it holds; it fails t with
// what if within passes first. cond runs on the test's goroutine and may call t.Fatal.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}
