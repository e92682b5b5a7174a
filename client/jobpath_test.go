package client_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// "", "." and ".." as a job id or artifact name made a path that is no job's ("/jobs/",
// which redirects to the list, or one the server cleans to another): the answer was
// read as the job's, or its artifact's bytes. They are refused before any request.
func TestNoJobIDIsRefused(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"01JGJ4Q2R0000000000000000A","model":"m","state":"done","created_at":"2025-01-02T03:04:05Z"}`))
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	ctx := testCtx(t)
	for _, id := range []string{"", ".", ".."} {
		if _, err := c.Job(ctx, id); err == nil {
			t.Errorf("Job(%q): no error", id)
		}
		if _, err := c.Cancel(ctx, id); err == nil {
			t.Errorf("Cancel(%q): no error", id)
		}
		if _, err := c.Wait(ctx, id); err == nil {
			t.Errorf("Wait(%q): no error", id)
		}
		if _, err := c.Artifact(ctx, id, "result.json"); err == nil {
			t.Errorf("Artifact(%q, result.json): no error", id)
		}
		if _, err := c.Artifact(ctx, "01JGJ4Q2R0000000000000000A", id); err == nil {
			t.Errorf("Artifact(id, %q): no error", id)
		}
	}
	if _, err := c.Watch(ctx, ".."); err == nil {
		t.Error(`Watch(".."): no error`)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests made for ids or names that are none", n)
	}
	// A real id still goes out.
	if _, err := c.Job(ctx, "01JGJ4Q2R0000000000000000A"); err != nil {
		t.Fatalf("Job: %v", err)
	}
	if requests.Load() != 1 {
		t.Errorf("%d requests for one Job call", requests.Load())
	}
}
