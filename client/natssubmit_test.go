package client_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestSubmitOverMaxPayload: a request larger than the NATS connection's max payload (but
// within POST /jobs' 32 MiB) is submitted by HTTP instead of failing.
func TestSubmitOverMaxPayload(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	nc := natsConn(t, f)
	c := newClient(t, f.URL, client.WithNATS(nc), client.WithPollInterval(never))
	prompt := strings.Repeat("x", int(nc.MaxPayload())+1024)
	for name, submit := range map[string]func(context.Context, client.SubmitRequest) (string, error){
		"Submit": func(ctx context.Context, req client.SubmitRequest) (string, error) {
			res, err := c.Submit(ctx, req)
			if err != nil {
				return "", err
			}
			if got, want := res.Text(), wantReply("tiny-a:latest", prompt); got != want {
				t.Errorf("Text() = %.40q…, want %.40q…", got, want)
			}
			return res.Job.ID, nil
		},
		"SubmitAsync": c.SubmitAsync,
	} {
		t.Run(name, func(t *testing.T) {
			id, err := submit(testCtx(t), chatJob("tiny-a", prompt))
			if err != nil {
				t.Fatalf("%s with a %d-byte prompt over NATS (max payload %d): %v", name, len(prompt), nc.MaxPayload(), err)
			}
			if id == "" {
				t.Fatal("no job id")
			}
		})
	}
}

// TestSubmitNoNATSReply: foreman takes the request off foreman.jobs.submit and never
// answers (it died). A context without deadline must not wait forever: the submit fails
// with a timeout, or, with an idempotency key, is retried by HTTP.
func TestSubmitNoNATSReply(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{NoNATSSubmit: true})
	var swallowed atomic.Int32
	sub, err := f.Conn.Subscribe(broker.SubmitSubject, func(*nats.Msg) { swallowed.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := f.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, f.URL, client.WithNATS(natsConn(t, f)), client.WithPollInterval(20*time.Millisecond))
	client.SetNATSSubmitTimeout(c, 300*time.Millisecond)

	// submit runs Submit with a context that never ends; the test, not the context,
	// gives up on a hang.
	submit := func(req client.SubmitRequest) (*client.Result, error) {
		type answer struct {
			res *client.Result
			err error
		}
		done := make(chan answer, 1)
		go func() {
			res, err := c.Submit(context.Background(), req)
			done <- answer{res, err}
		}()
		select {
		case a := <-done:
			return a.res, a.err
		case <-time.After(20 * time.Second):
			t.Fatal("Submit without a context deadline still waits for a reply that never comes")
			return nil, nil
		}
	}

	_, err = submit(chatJob("tiny-a", "nobody answers"))
	if !errors.Is(err, nats.ErrTimeout) || !strings.Contains(err.Error(), "IdempotencyKey") {
		t.Fatalf("Submit = %v; want an error matching nats.ErrTimeout that suggests an idempotency key", err)
	}
	// The request reached foreman's connection before the client gave up on it; its
	// callback may run after that, on a loaded machine.
	eventually(t, 10*time.Second, "the NATS submit swallowed", func() bool { return swallowed.Load() >= 1 })
	if n := swallowed.Load(); n != 1 {
		t.Fatalf("foreman got %d NATS submits, want 1", n)
	}
	if list, err := c.Jobs(testCtx(t), client.JobFilter{}); err != nil || len(list.Jobs) != 0 {
		t.Fatalf("Jobs = %+v, %v; want none (the failed submit must not fall back to HTTP without a key)", list, err)
	}

	req := chatJob("tiny-a", "keyed")
	req.IdempotencyKey = "no-reply-key"
	res, err := submit(req)
	if err != nil || res.Text() != wantReply("tiny-a:latest", "keyed") {
		t.Fatalf("Submit with an idempotency key = %v, %v; want the HTTP fallback's result", res, err)
	}
	eventually(t, 10*time.Second, "the keyed NATS submit swallowed", func() bool { return swallowed.Load() >= 2 })
	if n := swallowed.Load(); n != 2 {
		t.Fatalf("foreman got %d NATS submits, want 2 (the keyed one tried NATS first)", n)
	}
}

// TestSubmitNoNATSReplyByTheContextDeadline: a NATS submit that gets no reply before
// its context's deadline is the same "the job may have been queued" as one that waited
// out the client's own bound, and matches nats.ErrTimeout as the package doc says,
// besides context.DeadlineExceeded. It was the bare context error: a caller that told
// an unanswered submit by nats.ErrTimeout took it for one that never reached foreman.
func TestSubmitNoNATSReplyByTheContextDeadline(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{NoNATSSubmit: true})
	var swallowed atomic.Int32
	sub, err := f.Conn.Subscribe(broker.SubmitSubject, func(*nats.Msg) { swallowed.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := f.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, f.URL, client.WithNATS(natsConn(t, f)), client.WithPollInterval(never))
	for name, submit := range map[string]func(context.Context, client.SubmitRequest) error{
		"Submit": func(ctx context.Context, req client.SubmitRequest) error { _, err := c.Submit(ctx, req); return err },
		"SubmitAsync": func(ctx context.Context, req client.SubmitRequest) error {
			_, err := c.SubmitAsync(ctx, req)
			return err
		},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := submit(ctx, chatJob("tiny-a", "nobody answers "+name))
		cancel()
		if !errors.Is(err, nats.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "may have been queued") {
			t.Errorf("%s past its context's deadline = %v; want an error matching nats.ErrTimeout and context.DeadlineExceeded that says the job may have been queued", name, err)
		}
	}
	eventually(t, 10*time.Second, "the NATS submits swallowed", func() bool { return swallowed.Load() >= 2 })
}

// A NATS submit foreman takes and never answers, under WithAnswerTimeout, ends Submit
// with a *NoAnswerError that names the request as it went, on NATS: it said "POST /jobs",
// a request never made.
func TestSubmitNoNATSReplyUnderAnswerTimeoutNamesTheNATSRequest(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{NoNATSSubmit: true})
	sub, err := f.Conn.Subscribe(broker.SubmitSubject, func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := f.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, f.URL, client.WithNATS(natsConn(t, f)), client.WithPollInterval(never), client.WithAnswerTimeout(200*time.Millisecond))
	_, err = c.Submit(testCtx(t), chatJob("tiny-a", "nobody answers"))
	var na *client.NoAnswerError
	if !errors.As(err, &na) || na.Request != "NATS "+broker.SubmitSubject {
		t.Fatalf("Submit = %v (%T); want a *NoAnswerError naming NATS %s", err, err, broker.SubmitSubject)
	}
}
