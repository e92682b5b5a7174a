package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A job store electing a leader answers GET /jobs/{id} 503 for a few seconds (ADR-0030).
// The read Submit and Wait make before waiting takes that in its stride as the wait's
// polls do (OnWaitError, read again): failing there, Submit would have its caller submit
// again a job that was created and runs on.
func TestSubmitFirstReadFailingForNowIsMadeAgain(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			var posts, gets atomic.Int32
			mux := http.NewServeMux()
			mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusAccepted)
				_, _ = io.WriteString(w, `{"job_id":"01JFAULT000000000000000001"}`)
			})
			mux.HandleFunc("GET /jobs/01JFAULT000000000000000001", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if gets.Add(1) == 1 {
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(status)
					_, _ = io.WriteString(w, `{"error":"job store temporarily unavailable, retry shortly"}`)
					return
				}
				_, _ = io.WriteString(w, `{"id":"01JFAULT000000000000000001","kind":"chat","model":"m","state":"done","attempts":1,`+
					`"created_at":"2025-01-02T03:04:05Z","result":{"model":"m","message":{"role":"assistant","content":"hello"},"done":true}}`)
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
			var waitErrs []error
			req := chatJob("m", "x")
			req.OnWaitError = func(err error) { waitErrs = append(waitErrs, err) }
			res, err := c.Submit(testCtx(t), req)
			if err != nil {
				t.Fatalf("Submit: %v (POSTs %d: the job was created; the first read of it got %d once, OnWaitError saw %v)",
					err, posts.Load(), status, waitErrs)
			}
			if res.Text() != "hello" {
				t.Errorf("Text() = %q", res.Text())
			}
		})
	}
}

// A client made with WithNATSURL keeps nats.go's reconnect defaults (60 tries, 2 s
// apart). Once an outage of the NATS listener outlasts them the connection is closed for
// good; submits then go by POST /jobs, which answers, rather than fail with "nats:
// connection closed" for the client's life. The test shortens the reconnect budget.
func TestSubmitAfterTheNATSConnectionClosedGoesByHTTP(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	p := brokertest.NewProxy(t, strings.TrimPrefix(f.NATSURL, "nats://"))
	t.Cleanup(p.Close)
	closed := make(chan struct{})
	c := newClient(t, f.URL, client.WithNATSURL("nats://"+p.Addr(),
		append(natsAuth, nats.MaxReconnects(2), nats.ReconnectWait(20*time.Millisecond),
			nats.ClosedHandler(func(*nats.Conn) { close(closed) }))...))
	if _, err := c.SubmitAsync(testCtx(t), chatJob("tiny-a", "before")); err != nil {
		t.Fatalf("SubmitAsync over NATS: %v", err)
	}
	p.Close() // the NATS path gone for good, foreman's HTTP still there
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("the NATS connection did not close")
	}
	// HTTP works.
	if _, err := c.Jobs(testCtx(t), client.JobFilter{}); err != nil {
		t.Fatalf("Jobs over HTTP: %v", err)
	}
	if _, err := c.SubmitAsync(testCtx(t), chatJob("tiny-a", "after")); err != nil {
		t.Errorf("SubmitAsync with the NATS connection closed (HTTP fine): %v", err)
	}
}

// Submit with an IdempotencyKey is safe to retry (a CutShortError, a wait given up). A
// retry waiting by webhook registers a new receiver, but foreman replays the first job,
// whose events go to the first submit's receiver: the retry waits by polling instead of
// on the backstop poll (15 poll intervals, past this test's deadline).
func TestIdempotentRetryWaitsByPollingNotForAWebhook(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	release := f.Fake.Hold("tiny-a")
	defer release()
	// The retry's path, a poll or two and the job's run, takes a few intervals; the
	// backstop poll 15: a deadline of 10 tells them apart with room for a loaded machine
	// (at 300 ms, a CI run's load once took the 3 s).
	const interval = time.Second
	c := newClient(t, f.URL, client.WithPollInterval(interval))
	var mu sync.Mutex
	var hooks []string
	client.SetOnWebhookListen(c, func(u string) { mu.Lock(); hooks = append(hooks, u); mu.Unlock() })

	req := chatJob("tiny-a", "retry me")
	req.IdempotencyKey = "retry-1"
	ctx1, cancel1 := context.WithCancel(testCtx(t))
	var id string
	req.OnState = func(e client.Event) { id = e.JobID; cancel1() } // the caller gives up
	if _, err := c.Submit(ctx1, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("first Submit = %v, want context.Canceled", err)
	}
	// The retry: the job is let go once the retry waits for it.
	req.OnState = func(client.Event) { release() }
	ctx2, cancel2 := context.WithTimeout(testCtx(t), 10*interval)
	defer cancel2()
	res, err := c.Submit(ctx2, req)
	mu.Lock()
	defer mu.Unlock()
	if len(hooks) != 2 {
		t.Fatalf("receivers %v, want one per submit (the test shows nothing)", hooks)
	}
	if err != nil {
		t.Fatalf("retried Submit of job %s: %v", id, err)
	}
	if res.Job.ID != id {
		t.Errorf("retry got job %s, want the replayed %s", res.Job.ID, id)
	}
}

// Wait and Watch on a foreman that cannot be reached say so at once, as before: only
// Submit, whose job exists, reads its job again (a wrong URL would otherwise hold them).
func TestWaitOnAnUnreachableForemanSaysSo(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there now
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	if _, err := c.Wait(ctx, "01JFAULT000000000000000003"); !errors.Is(err, client.ErrUnreachable) {
		t.Errorf("Wait: %v, want ErrUnreachable", err)
	}
	if _, err := c.Watch(ctx, "01JFAULT000000000000000003"); !errors.Is(err, client.ErrUnreachable) {
		t.Errorf("Watch: %v, want ErrUnreachable", err)
	}
}

// A webhook secret that does not decode is refused when the client is made: every
// delivery's check would fail (401) and the waits would fall back to the backstop poll
// without a word.
func TestNewRefusesAWebhookSecretThatDoesNotDecode(t *testing.T) {
	t.Parallel()
	if _, err := client.New("http://127.0.0.1:8080", client.WithWebhookSecret("whsec_not base64!")); err == nil || !strings.Contains(err.Error(), "WithWebhookSecret") {
		t.Fatalf("New with a bad secret: %v, want an error naming WithWebhookSecret", err)
	}
	for _, secret := range []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "a raw secret"} {
		if _, err := client.New("http://127.0.0.1:8080", client.WithWebhookSecret(secret)); err != nil {
			t.Errorf("New with secret %q: %v", secret, err)
		}
	}
}

// Watch("") over NATS gets no event once its connection is closed for good (nats.go gave
// up reconnecting); it went quiet for the rest of the watch. It goes on by polling, and
// tells a job that ran after the close.
func TestWatchAllAfterTheNATSConnectionClosedPolls(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	p := brokertest.NewProxy(t, strings.TrimPrefix(f.NATSURL, "nats://"))
	t.Cleanup(p.Close)
	closed := make(chan struct{})
	c := newClient(t, f.URL, client.WithPollInterval(20*time.Millisecond),
		client.WithNATSURL("nats://"+p.Addr(),
			append(natsAuth, nats.MaxReconnects(2), nats.ReconnectWait(20*time.Millisecond),
				nats.ClosedHandler(func(*nats.Conn) { close(closed) }))...))
	client.SetNATSCheckEvery(c, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	events, first := watchAllSeeingAJob(ctx, t, c)
	// A second job: every job told, not only the latest, is remembered for the switch.
	second, err := c.SubmitAsync(ctx, chatJob("tiny-a", "second"))
	if err != nil {
		t.Fatal(err)
	}
	waitForEvent(ctx, t, events, second, client.StateDone)

	p.Close()
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("the NATS connection did not close")
	}
	after, err := c.SubmitAsync(ctx, chatJob("tiny-a", "after")) // by HTTP now
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range waitForEvent(ctx, t, events, after, client.StateDone) {
		if (e.JobID == first || e.JobID == second) && e.State == client.StateDone {
			t.Errorf("job %s's state told again after the switch to polling: %+v", e.JobID, e)
		}
	}
}

// watchAllSeeingAJob starts c.Watch(ctx, "") and returns it once it told a job run to
// its end (that job's id): the watch is known to receive.
func watchAllSeeingAJob(ctx context.Context, t *testing.T, c *client.Client) (<-chan client.Event, string) {
	t.Helper()
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	before, err := c.SubmitAsync(ctx, chatJob("tiny-a", "before"))
	if err != nil {
		t.Fatal(err)
	}
	waitForEvent(ctx, t, events, before, client.StateDone)
	return events, before
}

// waitForEvent reads events until job id reaches state, and returns what it read before.
func waitForEvent(ctx context.Context, t *testing.T, events <-chan client.Event, id string, state client.State) []client.Event {
	t.Helper()
	var read []client.Event
	for {
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatalf("the watch ended before job %s was %s", id, state)
			}
			if e.JobID == id && e.State == state {
				return read
			}
			read = append(read, e)
		case <-ctx.Done():
			t.Fatalf("job %s: no %s event (the watch went quiet)", id, state)
		}
	}
}

// NATS keeps no state event for a subscriber while its connection is down (foreman
// restarting, a network cut): Watch("") over NATS missed, without a word, what happened
// meanwhile. A lost event now tells it as the connection is back, ahead of the events
// that come after.
func TestWatchAllReportsAReconnect(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	p := brokertest.NewProxy(t, strings.TrimPrefix(f.NATSURL, "nats://"))
	t.Cleanup(p.Close)
	c, down, back := reconnectingClient(t, f.URL, p, 20*time.Millisecond)
	byHTTP := newClient(t, f.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	events, _ := watchAllSeeingAJob(ctx, t, c)

	p.Pause()
	awaitSignal(ctx, t, down, "the NATS connection did not go down")
	gap, err := byHTTP.Submit(ctx, chatJob("tiny-a", "while the connection is down"))
	if err != nil {
		t.Fatal(err)
	}
	p.Resume()
	awaitSignal(ctx, t, back, "the NATS connection did not come back")
	after, err := c.SubmitAsync(ctx, chatJob("tiny-a", "after"))
	if err != nil {
		t.Fatal(err)
	}
	read := waitForEvent(ctx, t, events, after, client.StateDone)
	lost := slices.IndexFunc(read, func(e client.Event) bool { return e.Lost > 0 })
	if lost < 0 {
		t.Fatalf("no lost event after the reconnect (job %s ran while the connection was down); read %+v", gap.Job.ID, read)
	}
	if read[lost].JobID != "" || read[lost].Error == "" {
		t.Errorf("lost event %+v: want no job id and an error telling why", read[lost])
	}
	for _, e := range read[:lost] {
		if e.JobID == after {
			t.Errorf("job %s's event %+v came before the report of the reconnect", after, e)
		}
	}
}

// A single-job watch over NATS polls only as a backstop (15 poll intervals): a job that
// finished while the connection was down was told that much later. The reconnect has it
// read at once.
func TestWatchJobReadsItAgainAfterAReconnect(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	// The backstop poll comes after 15 × 10 s, long after the test gives up.
	watchThroughANATSOutage(t, f, f.URL, 10*time.Second)
}

// watchThroughANATSOutage watches a held job over NATS through a proxy, through the
// client at base (foreman's HTTP, or a proxy before it) polling every poll: the
// connection goes down, the job finishes meanwhile, the connection comes back; the watch
// must tell the job done within the test's deadline.
func watchThroughANATSOutage(t *testing.T, f *foreman, base string, poll time.Duration) {
	t.Helper()
	release := f.Fake.Hold("tiny-a")
	defer release()
	p := brokertest.NewProxy(t, strings.TrimPrefix(f.NATSURL, "nats://"))
	t.Cleanup(p.Close)
	c, down, back := reconnectingClient(t, base, p, poll)
	byHTTP := newClient(t, f.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	id, err := byHTTP.SubmitAsync(ctx, chatJob("tiny-a", "held"))
	if err != nil {
		t.Fatal(err)
	}
	events, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	p.Pause()
	awaitSignal(ctx, t, down, "the NATS connection did not go down")
	release()
	if _, err := byHTTP.Wait(ctx, id); err != nil {
		t.Fatal(err)
	}
	p.Resume()
	awaitSignal(ctx, t, back, "the NATS connection did not come back")
	waitForEvent(ctx, t, events, id, client.StateDone)
}

// reconnectingClient is a client of foreman's HTTP at base, over NATS through proxy p,
// that reconnects for ever; down and back signal its disconnects and reconnects.
func reconnectingClient(t *testing.T, base string, p *brokertest.Proxy, poll time.Duration) (c *client.Client, down, back chan struct{}) {
	down, back = make(chan struct{}, 1), make(chan struct{}, 1)
	c = newClient(t, base, client.WithPollInterval(poll),
		client.WithNATSURL("nats://"+p.Addr(),
			append(natsAuth, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
				nats.DisconnectErrHandler(func(*nats.Conn, error) { signal(down) }),
				nats.ReconnectHandler(func(*nats.Conn) { signal(back) }))...))
	return c, down, back
}

// signal notes an event on ch without blocking nats.go's callbacks: a second one before
// the first is read adds nothing.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func awaitSignal(ctx context.Context, t *testing.T, ch <-chan struct{}, fail string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal(fail)
	}
}

// Watch("") by polling tells a job's later state: a job listed queued by one poll and
// done by the next is told twice, queued then done.
func TestWatchAllByPollingTellsALaterState(t *testing.T) {
	t.Parallel()
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		state := "queued"
		if polls.Add(1) > 1 {
			state = "done"
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"jobs":[{"id":"01JWATCH000000000000000001","model":"tiny-a","state":%q,"created_at":"2026-01-01T00:00:00Z"}]}`, state)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []client.State{client.StateQueued, client.StateDone} {
		select {
		case e := <-events:
			if e.JobID != "01JWATCH000000000000000001" || e.State != want {
				t.Fatalf("event %+v, want the job %s", e, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", want)
		}
	}
}

// failSecondRead puts a proxy before foreman that answers the second GET /jobs/{id} of
// each job 503, as a store electing a leader does (ADR-0030): for a client waiting on
// events, the first read is the one before the wait, the second the read of the final
// record its terminal event asks for (or the read a reconnect asks for).
func failSecondRead(t *testing.T, f *foreman) string { return failRead(t, f, 2) }

// failRead is failSecondRead for the nth GET /jobs/{id} of each job.
func failRead(t *testing.T, f *foreman, nth int) string {
	t.Helper()
	target, err := url.Parse(f.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := wholeBody(httputil.NewSingleHostReverseProxy(target))
	var mu sync.Mutex
	reads := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id, ok := strings.CutPrefix(r.URL.Path, "/jobs/"); ok && r.Method == http.MethodGet && !strings.Contains(id, "/") {
			mu.Lock()
			reads[id]++
			n := reads[id]
			mu.Unlock()
			if n == nth {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"error":"job store temporarily unavailable, retry shortly"}`)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A client living on events (polling every hour) that reads a job's final record after
// its terminal event and finds the store unavailable for now reads it again briskly, not
// an hour later: Submit returns the result, and Watch closes its channel after the
// terminal state.
func TestFinalReadFailingForNowIsMadeAgainBriskly(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, failSecondRead(t, f), client.WithNATS(natsConn(t, f)), client.WithPollInterval(never))

	t.Run("Submit", func(t *testing.T) {
		ctx := testCtx(t)
		release := f.Fake.Hold("tiny-a")
		defer release()
		req := chatJob("tiny-a", "brisk")
		var states []client.State
		req.OnState = func(e client.Event) {
			states = append(states, e.State)
			release() // the job runs once its first read was made
		}
		var waitErrs []error
		req.OnWaitError = func(err error) { waitErrs = append(waitErrs, err) }
		res, err := c.Submit(ctx, req)
		if err != nil {
			t.Fatalf("Submit: %v (states seen %v, read errors %v)", err, states, waitErrs)
		}
		if got, want := res.Text(), wantReply("tiny-a:latest", "brisk"); got != want {
			t.Errorf("Text() = %q, want %q", got, want)
		}
		var ae *client.APIError
		if len(waitErrs) != 1 || !errors.As(waitErrs[0], &ae) || ae.Status != http.StatusServiceUnavailable {
			t.Errorf("read errors %v; want the one 503 of the final record's first read", waitErrs)
		}
	})

	t.Run("Watch", func(t *testing.T) {
		ctx := testCtx(t)
		release := f.Fake.Hold("tiny-a")
		defer release()
		id, err := c.SubmitAsync(ctx, chatJob("tiny-a", "brisk watch"))
		if err != nil {
			t.Fatal(err)
		}
		events, err := c.Watch(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		release()
		var states []client.State
		for e := range events {
			states = append(states, e.State)
		}
		if ctx.Err() != nil || len(states) == 0 || states[len(states)-1] != client.StateDone {
			t.Fatalf("Watch told %v and closed (context: %v); want it to end in done and close", states, ctx.Err())
		}
	})
}

// A client living on events (polling every hour) whose read of the job Submit just made
// finds the store unavailable for now reads it again briskly, not a poll interval (an
// hour) later while the job's events wait unread: Submit returns the result.
func TestSubmitFirstReadFailingForNowIsMadeAgainBriskly(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, failRead(t, f, 1), client.WithNATS(natsConn(t, f)), client.WithPollInterval(never))
	var waitErrs []error
	req := chatJob("tiny-a", "brisk first read")
	req.OnWaitError = func(err error) { waitErrs = append(waitErrs, err) }
	res, err := c.Submit(testCtx(t), req)
	if err != nil {
		t.Fatalf("Submit: %v (read errors %v)", err, waitErrs)
	}
	if got, want := res.Text(), wantReply("tiny-a:latest", "brisk first read"); got != want {
		t.Errorf("Text() = %q, want %q", got, want)
	}
	var ae *client.APIError
	if len(waitErrs) != 1 || !errors.As(waitErrs[0], &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("read errors %v; want the one 503 of the first read", waitErrs)
	}
}

// A single-job watch over NATS reads its job at once when the connection comes back; a
// read that then fails for now (foreman's HTTP not yet up, its store electing a leader)
// waited the backstop poll (15 poll intervals: 15 hours here) while the job, done in the
// meantime, sent no more events. It is made again briskly.
func TestWatchJobReadAfterAReconnectFailingForNowIsMadeAgainBriskly(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	// The watch's first read passes, the one after the reconnect gets 503.
	watchThroughANATSOutage(t, f, failSecondRead(t, f), never)
}

// A single-job wait over NATS whose connection closes for good (nats.go gave up
// reconnecting: foreman down longer than its reconnect budget) gets no event again: it
// waited on the backstop poll alone (15 poll intervals, past this test's deadline). It
// polls at the poll interval instead.
func TestWatchJobAfterTheNATSConnectionClosedPolls(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	release := f.Fake.Hold("tiny-a")
	defer release()
	p := brokertest.NewProxy(t, strings.TrimPrefix(f.NATSURL, "nats://"))
	t.Cleanup(p.Close)
	closed := make(chan struct{})
	// Polls every 3 s; the backstop every 45 s, past the test's 30 s.
	c := newClient(t, f.URL, client.WithPollInterval(3*time.Second),
		client.WithNATSURL("nats://"+p.Addr(),
			append(natsAuth, nats.MaxReconnects(2), nats.ReconnectWait(20*time.Millisecond),
				nats.ClosedHandler(func(*nats.Conn) { close(closed) }))...))
	ctx := testCtx(t)
	id, err := c.SubmitAsync(ctx, chatJob("tiny-a", "held"))
	if err != nil {
		t.Fatal(err)
	}
	events, err := c.Watch(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	select { // the watch has begun
	case <-events:
	case <-ctx.Done():
		t.Fatal("no first event")
	}

	p.Close()
	awaitSignal(ctx, t, closed, "the NATS connection did not close")
	release()
	waitForEvent(ctx, t, events, id, client.StateDone)
}

// Watch("") by polling whose poll fails for good (a 401 after a token changed) closes its
// channel instead of telling nothing for ever; one that fails for now (a 503) goes on.
func TestWatchAllByPollingEndsWhenAPollFailsForGood(t *testing.T) {
	t.Parallel()
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch polls.Add(1) {
		case 1:
			_, _ = io.WriteString(w, `{"jobs":[{"id":"01JWATCH000000000000000001","model":"tiny-a","state":"queued","created_at":"2026-01-01T00:00:00Z"}]}`)
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"job store temporarily unavailable, retry shortly"}`)
		default:
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"unauthorized"}`)
		}
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(20*time.Millisecond))
	ctx := testCtx(t)
	events, err := c.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var told []client.Event
	for e := range events {
		told = append(told, e)
	}
	if ctx.Err() != nil {
		t.Fatalf("the watch told %v and went on until its context ended; want it closed after the 401", told)
	}
	if len(told) != 1 || told[0].State != client.StateQueued {
		t.Errorf("told %v, want the queued job once", told)
	}
	if n := polls.Load(); n != 3 {
		t.Errorf("%d polls, want 3: the 503 polled again, the 401 not", n)
	}
}
