package client_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A read of the final record that lags behind the terminal event (a replica's copy of
// the record, which a direct get may serve) is read again, not told: OnState got done,
// then the state before it, then done again.
func TestFinalReadLaggingBehindIsNotTold(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	record := func(state string) string {
		return `{"id":"` + id + `","kind":"chat","model":"m","state":"` + state + `","attempts":1,` +
			`"created_at":"2025-01-02T03:04:05Z","result":{"model":"m","message":{"role":"assistant","content":"hello"},"done":true}}`
	}
	var reads atomic.Int32
	var delivered sync.WaitGroup
	t.Cleanup(delivered.Wait)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Hook string `json:"state_webhook_url"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Hook == "" {
			t.Errorf("submit without a webhook URL (%v)", err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"job_id":"`+id+`"}`)
		delivered.Add(1)
		go func() { // the terminal state's delivery
			defer delivered.Done()
			event := `{"job_id":"` + id + `","state":"done","model":"m","attempt":1,"at":"2025-01-02T03:04:06Z"}`
			resp, err := http.Post(body.Hook, "application/json", bytes.NewReader([]byte(event)))
			if err != nil {
				t.Errorf("deliver: %v", err)
				return
			}
			resp.Body.Close()
		}()
	})
	mux.HandleFunc("GET /jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch reads.Add(1) {
		case 1:
			_, _ = io.WriteString(w, record("queued"))
		case 2:
			_, _ = io.WriteString(w, record("working")) // behind the done event
		default:
			_, _ = io.WriteString(w, record("done"))
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	states := submitTellingStates(t, srv.URL)
	if want := []client.State{client.StateQueued, client.StateDone}; !slices.Equal(states, want) {
		t.Errorf("OnState told %v, want %v", states, want)
	}
}
