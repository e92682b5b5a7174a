package client_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// TestWebhookStampedOffTheClockPollsAtOnce: a client whose clock is more than 5 minutes
// off foreman's refuses every delivery for its timestamp. Such a delivery, signed with
// the secret, is answered 410 (foreman sends the job no more, instead of retrying a 401
// for hours), OnWaitError is told of the clock difference, and Submit reads its job at
// once and polls it from then on: it ended only by the backstop poll (15 × the poll
// interval) before, without a word. A delivery stamped off but not signed with the
// secret (a forgery) stays a 401 and changes nothing.
func TestWebhookStampedOffTheClockPollsAtOnce(t *testing.T) {
	t.Parallel()
	// foreman signs with another secret: none of its deliveries is taken, as none is
	// from a foreman whose clock is off this one's.
	f := startForeman(t, foremanConfig{WebhookSecret: "whsec_" + "b3RoZXItc2VjcmV0LW9mLWZvcmVtYW4="})
	c := newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	hooks := make(chan string, 1)
	client.SetOnWebhookListen(c, func(u string) { hooks <- u })
	ctx := testCtx(t)
	var (
		mu       sync.Mutex
		waitErrs []error
	)
	ids := make(chan string, 1)
	req := chatJob("tiny-a", "stamped off")
	req.OnState = func(e client.Event) {
		select {
		case ids <- e.JobID:
		default:
		}
	}
	req.OnWaitError = func(err error) {
		mu.Lock()
		defer mu.Unlock()
		waitErrs = append(waitErrs, err)
	}
	type outcome struct {
		res *client.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := c.Submit(ctx, req)
		done <- outcome{res, err}
	}()
	var hook, id string
	for _, ch := range []struct {
		c   chan string
		out *string
	}{{hooks, &hook}, {ids, &id}} {
		select {
		case *ch.out = <-ch.c:
		case <-ctx.Done():
			t.Fatal("Submit started no webhook receiver, or told no state")
		}
	}
	// The job ends; its done delivery is refused (another secret), so Submit waits on.
	release()
	eventually(t, 20*time.Second, "the job done", func() bool {
		j, err := c.Job(ctx, id)
		return err == nil && j.State == client.StateDone
	})

	post := func(secret string, stamp time.Time) int {
		t.Helper()
		body := []byte(`{"job_id":"` + id + `","state":"done","model":"tiny-a","attempt":1}`)
		sig, err := signature.Sign(secret, "msg_off", stamp, body)
		if err != nil {
			t.Fatal(err)
		}
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set(signature.HeaderID, "msg_off")
		r.Header.Set(signature.HeaderTimestamp, strconv.FormatInt(stamp.Unix(), 10))
		r.Header.Set(signature.HeaderSignature, sig)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	off := time.Now().Add(-10 * time.Minute)
	if code := post("whsec_Zm9yZ2VkLWJ5LXNvbWVvbmUtZWxzZQ==", off); code != http.StatusUnauthorized {
		t.Errorf("a delivery stamped off, not signed with the secret: %d, want 401", code)
	}
	mu.Lock()
	if len(waitErrs) != 0 {
		t.Errorf("OnWaitError told of a forged delivery: %v", waitErrs)
	}
	mu.Unlock()
	if code := post(testSecret, off); code != http.StatusGone {
		t.Errorf("a delivery signed with the secret, stamped 10 minutes behind: %d, want 410", code)
	}
	select {
	case o := <-done:
		if o.err != nil || o.res.Job == nil || o.res.Job.ID != id || o.res.Job.State != client.StateDone {
			t.Fatalf("Submit = %+v, %v; want its job done", o.res, o.err)
		}
	case <-ctx.Done():
		t.Fatal("Submit still waits for deliveries its receiver refuses (the backstop poll is an hour off)")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(waitErrs) != 1 || !errors.Is(waitErrs[0], client.ErrWebhookTimestamp) || !strings.Contains(waitErrs[0].Error(), "stamped 10m") || !strings.Contains(waitErrs[0].Error(), "behind this machine") {
		t.Errorf("OnWaitError got %v; want one clock difference of about 10m behind, matching ErrWebhookTimestamp", waitErrs)
	}
}
