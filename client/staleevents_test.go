package client_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Submit reads the job once it is queued and then takes its events from its webhook
// receiver. A job that started at once is read working, and the receiver then brings the
// events that led there (queued, loading): OnState must not tell them after working, as
// `foreman submit --wait` did (working, queued, working, done). States that really follow
// the one read (an attempt given back uncounted, and started again) are all told. (A
// retrying event of an attempt before the one read cannot be told from an uncounted
// attempt's, whose retrying counts one less: it is told.)
func TestOnStateDoesNotTellStatesBackwards(t *testing.T) {
	t.Parallel()
	type ev struct {
		state   string
		attempt int
	}
	for _, tc := range []struct {
		name   string
		read   ev   // the job as its first read finds it
		events []ev // the webhook deliveries, in the order the job went through them
		want   []client.State
	}{
		{"started before the read", ev{"working", 1},
			[]ev{{"queued", 0}, {"loading", 1}, {"working", 1}, {"done", 1}},
			[]client.State{client.StateWorking, client.StateDone}},
		{"loading when read", ev{"loading", 1},
			[]ev{{"queued", 0}, {"loading", 1}, {"working", 1}, {"done", 1}},
			[]client.State{client.StateLoading, client.StateWorking, client.StateDone}},
		{"read on its second attempt", ev{"working", 2},
			[]ev{{"queued", 0}, {"working", 1}, {"working", 2}, {"done", 2}},
			[]client.State{client.StateWorking, client.StateDone}},
		{"read retrying", ev{"retrying", 1},
			[]ev{{"queued", 0}, {"working", 1}, {"retrying", 1}, {"working", 2}, {"done", 2}},
			[]client.State{client.StateRetrying, client.StateWorking, client.StateDone}},
		{"an uncounted attempt", ev{"queued", 0},
			[]ev{{"queued", 0}, {"working", 1}, {"retrying", 0}, {"working", 1}, {"done", 1}},
			[]client.State{client.StateQueued, client.StateWorking, client.StateRetrying, client.StateWorking, client.StateDone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const id = "01JGJ4Q2R0000000000000000A"
			final := tc.events[len(tc.events)-1]
			record := func(e ev) string {
				return fmt.Sprintf(`{"id":%q,"kind":"chat","model":"m","state":%q,"attempts":%d,`+
					`"created_at":"2025-01-02T03:04:05Z","result":{"model":"m","message":{"role":"assistant","content":"hello"},"done":true}}`,
					id, e.state, e.attempt)
			}
			var (
				hook      atomic.Value
				reads     atomic.Int32
				delivered sync.WaitGroup
			)
			t.Cleanup(delivered.Wait)
			mux := http.NewServeMux()
			mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
				var body struct {
					Hook string `json:"state_webhook_url"`
				}
				if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Hook == "" {
					t.Errorf("submit without a webhook URL (%v)", err)
				}
				hook.Store(body.Hook)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusAccepted)
				_, _ = io.WriteString(w, `{"job_id":"`+id+`"}`)
			})
			mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if reads.Add(1) > 1 {
					_, _ = io.WriteString(w, record(final)) // the final record, after the terminal event
					return
				}
				_, _ = io.WriteString(w, record(tc.read))
				delivered.Add(1)
				go func() { // the job's events, in order, after the first read
					defer delivered.Done()
					for i, e := range tc.events {
						event := fmt.Sprintf(`{"job_id":%q,"state":%q,"model":"m","attempt":%d,"at":"2025-01-02T03:04:06Z"}`, id, e.state, e.attempt)
						resp, err := http.Post(hook.Load().(string), "application/json", bytes.NewReader([]byte(event)))
						if err != nil {
							if i < len(tc.events)-1 { // the terminal one may end Submit, and its receiver, first
								t.Errorf("deliver %s: %v", e.state, err)
							}
							return
						}
						resp.Body.Close()
					}
				}()
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			states := submitTellingStates(t, srv.URL)
			if !slices.Equal(states, tc.want) {
				t.Errorf("OnState told %v, want %v", states, tc.want)
			}
		})
	}
}

// submitTellingStates submits a chat to the foreman at url, polling never, and returns the
// states its OnState told; the answer must be "hello".
func submitTellingStates(t *testing.T, url string) []client.State {
	t.Helper()
	c := newClient(t, url, client.WithPollInterval(never))
	req := chatJob("m", "x")
	var states []client.State
	req.OnState = func(e client.Event) { states = append(states, e.State) }
	res, err := c.Submit(testCtx(t), req)
	if err != nil {
		t.Fatalf("Submit: %v (states %v)", err, states)
	}
	if res.Text() != "hello" {
		t.Errorf("Text() = %q", res.Text())
	}
	return states
}
