package client_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A full queue is a 503 whose Retry-After says when to try again; the client's error
// dropped it, and a batch caller could only guess.
func TestAFullQueueSaysWhenToRetry(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{MaxQueue: 1})
	release := f.Fake.Hold("tiny-a")
	defer release()
	c := newClient(t, f.URL, client.WithPollingOnly())
	ctx := testCtx(t)
	// One job, held: the queue (which counts it until it ends) is full.
	if _, err := c.SubmitAsync(ctx, chatJob("tiny-a", "held")); err != nil {
		t.Fatal(err)
	}
	_, err := c.SubmitAsync(ctx, chatJob("tiny-a", "refused"))
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("submit to a full queue: %v, want a 503", err)
	}
	if ae.RetryAfter <= 0 {
		t.Errorf("503 %q: RetryAfter %v, want foreman's Retry-After", ae.Message, ae.RetryAfter)
	}
}

// Retry-After in seconds or as an HTTP date; a bad or past one is none.
func TestRetryAfterForms(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, tc := range []struct {
		header   string
		min, max time.Duration
	}{
		{"7", 7 * time.Second, 7 * time.Second},
		{now.Add(time.Minute).UTC().Format(http.TimeFormat), 50 * time.Second, time.Minute},
		{now.Add(-time.Minute).UTC().Format(http.TimeFormat), 0, 0},
		{"soon", 0, 0},
		{"-3", 0, 0},
		{"99999999999999", 24 * time.Hour, 24 * time.Hour},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", tc.header)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"error":"program over its share"}`))
		}))
		c := newClient(t, srv.URL, client.WithPollingOnly())
		_, err := c.SubmitAsync(testCtx(t), chatJob("m", "x"))
		srv.Close()
		var ae *client.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests {
			t.Fatalf("Retry-After %q: %v, want a 429", tc.header, err)
		}
		if ae.RetryAfter < tc.min || ae.RetryAfter > tc.max {
			t.Errorf("Retry-After %q: RetryAfter %v, want %v…%v", tc.header, ae.RetryAfter, tc.min, tc.max)
		}
	}
}
