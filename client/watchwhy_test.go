package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// WatchWhy tells why a watch's channel closed: nil after the job's terminal state, the
// context's error, or the error of the read that ended it (which Watch's caller could
// only guess at by reading the job again).
func TestWatchWhyTellsWhyTheChannelClosed(t *testing.T) {
	t.Parallel()
	record := func(state string) string {
		return strings.Replace(queuedRecord, `"state":"queued"`, `"state":"`+state+`"`, 1)
	}
	foremanJSON := func(w http.ResponseWriter, status int, body string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
	for _, tc := range []struct {
		name string
		id   string
		// second answers every read after the first.
		second func(w http.ResponseWriter)
		cancel bool // the caller's ctx ends once the first state came
		check  func(t *testing.T, why error)
	}{
		{"job ended", proxiedJob, func(w http.ResponseWriter) { foremanJSON(w, http.StatusOK, record("done")) }, false,
			func(t *testing.T, why error) {
				if why != nil {
					t.Errorf("why = %v; want nil after the terminal state", why)
				}
			}},
		{"read refused for good", proxiedJob, func(w http.ResponseWriter) {
			foremanJSON(w, http.StatusUnauthorized, `{"error":"unauthorized: wrong token"}`)
		}, false, func(t *testing.T, why error) {
			if !errors.Is(why, client.ErrUnauthorized) {
				t.Errorf("why = %v (%T); want the 401", why, why)
			}
		}},
		{"read unanswered", proxiedJob, func(w http.ResponseWriter) { proxyPages["nginx 504"].write(w) }, false,
			func(t *testing.T, why error) {
				var na *client.NoAnswerError
				if !errors.As(why, &na) || na.Instead == nil || na.Instead.Status != http.StatusGatewayTimeout {
					t.Errorf("why = %v (%T); want a *NoAnswerError with the proxy's 504", why, why)
				}
			}},
		{"ctx ended", proxiedJob, func(w http.ResponseWriter) { foremanJSON(w, http.StatusOK, queuedRecord) }, true,
			func(t *testing.T, why error) {
				if !errors.Is(why, context.Canceled) {
					t.Errorf("why = %v; want context.Canceled", why)
				}
			}},
		{"every job, a poll refused for good", "", func(w http.ResponseWriter) {
			foremanJSON(w, http.StatusUnauthorized, `{"error":"unauthorized: wrong token"}`)
		}, false, func(t *testing.T, why error) {
			if !errors.Is(why, client.ErrUnauthorized) {
				t.Errorf("why = %v (%T); want the 401", why, why)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var reads atomic.Int32
			read := func(w http.ResponseWriter, first string) {
				if reads.Add(1) == 1 {
					foremanJSON(w, http.StatusOK, first)
					return
				}
				tc.second(w)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) { read(w, queuedRecord) })
			mux.HandleFunc("GET /jobs", func(w http.ResponseWriter, r *http.Request) {
				read(w, `{"jobs":[`+queuedRecord+`],"now":"2025-01-02T03:04:05Z"}`)
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
			defer cancel()
			c := newClient(t, srv.URL, client.WithPollingOnly(), client.WithPollInterval(10*time.Millisecond), client.WithAnswerTimeout(time.Second))
			events, why, err := c.WatchWhy(ctx, tc.id)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for range events {
				if n++; n == 1 && tc.cancel {
					cancel()
				}
			}
			if n == 0 {
				t.Error("no state came")
			}
			if tc.cancel {
				tc.check(t, why())
				return
			}
			if ctx.Err() != nil {
				t.Fatal("the test's own deadline ended the watch")
			}
			tc.check(t, why())
		})
	}
}
