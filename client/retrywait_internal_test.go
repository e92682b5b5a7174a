package client

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

// A read that failed for now waits what foreman's Retry-After asks (a store electing a
// leader says how long it takes) rather than the brisk wait it would make otherwise, up
// to maxRetryWait; a longer wait of its own stands.
func TestRetryWaitHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	unavailable := func(after time.Duration) error {
		return &APIError{Status: http.StatusServiceUnavailable, Message: "job store temporarily unavailable", RetryAfter: after}
	}
	for _, c := range []struct {
		name string
		err  error
		wait time.Duration
		want time.Duration
	}{
		{"Retry-After longer than the wait", unavailable(2 * time.Second), 50 * time.Millisecond, 2 * time.Second},
		{"Retry-After past the bound", unavailable(24 * time.Hour), 50 * time.Millisecond, maxRetryWait},
		{"Retry-After shorter than the wait", unavailable(time.Second), 5 * time.Second, 5 * time.Second},
		{"no Retry-After", unavailable(0), 50 * time.Millisecond, 50 * time.Millisecond},
		{"not an answer", &ConnectionError{Err: errors.New("connection refused")}, 50 * time.Millisecond, 50 * time.Millisecond},
	} {
		if got := retryWait(c.err, c.wait); got != c.want {
			t.Errorf("%s: retryWait = %v, want %v", c.name, got, c.want)
		}
	}
}
