package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// TestRetiredReceiverAnswersLateDeliveries410: a Submit that returned before its job's
// last event came (its context ended while the job waited; WithCancelOnContextDone's
// cancel; a poll that saw the end first) leaves its receiver answering foreman's
// deliveries 410, so foreman sends that job no more; its port was closed at once, and
// foreman retried such a delivery, refused, for hours (ADR-0092). A forged delivery is
// still 401. Once it answered foreman 410 it closes, its port released (it lingered
// receiverLinger whatever came), and Close releases the port.
func TestRetiredReceiverAnswersLateDeliveries410(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	c, err := client.New(f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	ctx := testCtx(t)
	// The job waits behind one the target holds, so foreman sends its receiver nothing
	// more (its start) before the deliveries below.
	if _, err := c.SubmitAsync(ctx, chatJob("tiny-a", "ahead")); err != nil {
		t.Fatal(err)
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	hooks := make(chan string, 1)
	client.SetOnWebhookListen(c, func(u string) { hooks <- u })
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The caller gives up once its job waits. Without OnState the receiver is sent only
	// the job's terminal event, which does not come while the job waits.
	ids := make(chan string, 1)
	go func() {
		for sctx.Err() == nil {
			if l, err := c.Jobs(ctx, client.JobFilter{State: client.StateQueued}); err == nil && len(l.Jobs) == 1 {
				ids <- l.Jobs[0].ID
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		close(ids)
	}()
	if _, err := c.Submit(sctx, chatJob("tiny-a", "given up")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit = %v; want the context's cancel", err)
	}
	hook, id := <-hooks, <-ids

	post := func(secret string) (int, error) {
		t.Helper()
		body := []byte(`{"job_id":"` + id + `","state":"done","model":"tiny-a","attempt":1}`)
		now := time.Now()
		sig, err := signature.Sign(secret, id+"-9", now, body)
		if err != nil {
			t.Fatal(err)
		}
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set(signature.HeaderID, id+"-9")
		r.Header.Set(signature.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		r.Header.Set(signature.HeaderSignature, sig)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := post("whsec_Zm9yZ2VkLWJ5LXNvbWVvbmUtZWxzZQ=="); err != nil || code != http.StatusUnauthorized {
		t.Errorf("a forged delivery after Submit returned: %d, %v; want 401", code, err)
	}
	if n := client.LingeringReceivers(c); n != 1 {
		t.Fatalf("%d retired receivers open before foreman's last word; want 1", n)
	}
	if code, err := post(testSecret); err != nil || code != http.StatusGone {
		t.Errorf("the job's delivery after Submit returned: %d, %v; want 410, foreman then sends the job no more", code, err)
	}
	// Foreman sends it nothing more: it closes now, not after lingering its full time.
	if n := client.LingeringReceivers(c); n != 0 {
		t.Errorf("%d retired receivers open after they answered foreman 410; want 0", n)
	}
	released := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := post(testSecret); err != nil {
			released = true
			break
		}
	}
	if !released {
		t.Errorf("the receiver's port is still open after it answered foreman 410")
	}
	c.Close()
	if code, err := post(testSecret); err == nil {
		t.Errorf("a delivery after Close: %d; want the port released", code)
	}
}

// TestFixedPortReceiverIsTakenOver: with a fixed WithWebhookListenAddr port (as
// WithWebhookURL needs), a Submit's receiver takes the port over from the previous
// Submit's retired receiver, instead of failing to bind and polling.
func TestFixedPortReceiverIsTakenOver(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(never), client.WithWebhookListenAddr(addr))
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	bound := make(chan string, 2)
	client.SetOnWebhookBound(c, func(_, listenAddr string) { bound <- listenAddr })
	ctx := testCtx(t)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := chatJob("tiny-a", "given up")
	req.OnState = func(client.Event) { cancel() }
	if _, err := c.Submit(sctx, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit = %v; want the context's cancel", err)
	}
	release()
	res, err := c.Submit(ctx, chatJob("tiny-a", "second"))
	if err != nil || res.Job.State != client.StateDone {
		t.Fatalf("second Submit = %+v, %v", res, err)
	}
	if len(bound) != 2 {
		t.Fatalf("receivers bound: %d; want the second Submit's too", len(bound))
	}
}
