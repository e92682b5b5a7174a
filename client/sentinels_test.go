package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// foreman's refusals a caller acts on (no such job, a missing or wrong token, a full
// queue, a sync call's job canceled by DELETE /jobs/{id}) match a sentinel with
// errors.Is. They were *APIErrors matching none: a caller had to compare statuses, and
// could tell a full queue from a store electing a leader (both 503) only by its words.
func TestRefusalsMatchTheirSentinels(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{AuthToken: "tok", MaxQueue: 1})
	ctx := testCtx(t)
	c := newClient(t, f.URL, client.WithToken("tok"), client.WithPollingOnly())

	const unknown = "01J00000000000000000000000"
	_, err := c.Job(ctx, unknown)
	wantIs(t, "Job(unknown)", err, client.ErrNotFound)
	_, err = c.Artifact(ctx, unknown, "result.json")
	wantIs(t, "Artifact(unknown)", err, client.ErrNotFound)

	_, err = newClient(t, f.URL).Tags(ctx)
	wantIs(t, "no token", err, client.ErrUnauthorized)
	_, err = newClient(t, f.URL, client.WithToken("other")).Tags(ctx)
	wantIs(t, "a wrong token", err, client.ErrUnauthorized)

	// A sync chat, held at the target, fills the queue (it counts the running job).
	release := f.Fake.Hold("tiny-a")
	defer release()
	queued := make(chan string, 1)
	cq := newClient(t, f.URL, client.WithToken("tok"), client.WithOnQueued(func(id string) { queued <- id }))
	chatErr := make(chan error, 1)
	go func() {
		_, err := cq.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "held"}}}, nil)
		chatErr <- err
	}()
	var id string
	select {
	case id = <-queued:
	case <-ctx.Done():
		t.Fatal("the chat's job was never queued")
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	_, err = c.SubmitAsync(ctx, chatJob("tiny-b", "refused"))
	wantIs(t, "submit to a full queue", err, client.ErrQueueFull)

	if _, err := c.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-chatErr:
	case <-ctx.Done():
		t.Fatal("the canceled chat did not return")
	}
	wantIs(t, "a sync chat whose job was canceled", err, client.ErrJobCanceled)
	if errors.Is(err, client.ErrQueueFull) || errors.Is(err, client.ErrNotFound) {
		t.Errorf("a canceled chat's %v matches another sentinel", err)
	}
	// A cancel of a job that ended is a 409 too, but no job of the caller's was canceled.
	_, err = c.Cancel(ctx, id)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || errors.Is(err, client.ErrJobCanceled) {
		t.Errorf("Cancel of an ended job: %v, want a 409 not matching ErrJobCanceled", err)
	}
}

// Another 503 (a store electing a leader) is no full queue.
func TestAnother503IsNoFullQueue(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"job store temporarily unavailable, retry shortly"}`))
	}))
	defer srv.Close()
	_, err := newClient(t, srv.URL, client.WithPollingOnly()).SubmitAsync(testCtx(t), chatJob("m", "x"))
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("got %v, want a 503", err)
	}
	for _, s := range []error{client.ErrQueueFull, client.ErrNotFound, client.ErrUnauthorized, client.ErrJobCanceled} {
		if errors.Is(err, s) {
			t.Errorf("%v matches %v", err, s)
		}
	}
}

func wantIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: %v (%T), want it to match %v", what, err, err, target)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%s: %v", what, err)
	}
}

// A chat canceled while it streams ends in foreman's error line, under the 200 already
// sent: it matches ErrJobCanceled as the 409 of a chat canceled before its answer began.
func TestAStreamCanceledMidwayMatchesErrJobCanceled(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	f := startForeman(t, foremanConfig{Fake: ollamatest.Config{BeforeToken: func(ctx context.Context, i int) error {
		if i == 2 {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}}})
	defer close(gate)
	ctx := testCtx(t)
	queued := make(chan string, 1)
	c := newClient(t, f.URL, client.WithOnQueued(func(id string) { queued <- id }))
	streaming := make(chan struct{})
	var once sync.Once
	chatErr := make(chan error, 1)
	go func() {
		_, err := c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
			func(*client.ChatResponse) error { once.Do(func() { close(streaming) }); return nil })
		chatErr <- err
	}()
	var id string
	select {
	case id = <-queued:
	case <-ctx.Done():
		t.Fatal("the chat's job was never queued")
	}
	select {
	case <-streaming:
	case <-ctx.Done():
		t.Fatal("the chat never streamed")
	}
	if _, err := c.Cancel(ctx, id); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-chatErr:
	case <-ctx.Done():
		t.Fatal("the canceled chat did not return")
	}
	wantIs(t, "a chat canceled while it streamed", err, client.ErrJobCanceled)
}
