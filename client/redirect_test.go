package client_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestARedirectThatTurnsACallIntoAGetIsAnError: a proxy in front of foreman that
// answers a POST or DELETE with 301 or 302 (http to https, say) makes Go's HTTP client
// ask the new address with a GET and no body. The client says so, naming the address to
// use, rather than reading the GET's answer (for POST /jobs, a page of jobs) as the
// call's ("submit: reply without a job_id").
func TestARedirectThatTurnsACallIntoAGetIsAnError(t *testing.T) {
	t.Parallel()
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			t.Parallel()
			var moved string
			mux := http.NewServeMux()
			mux.HandleFunc("/old/", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, moved+strings.TrimPrefix(r.URL.Path, "/old"), code)
			})
			mux.HandleFunc("GET /new/jobs", func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write([]byte(`{"jobs":[]}`))
			})
			mux.HandleFunc("GET /new/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte(`{"id":"` + r.PathValue("id") + `","state":"queued","model":"m"}`))
			})
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			moved = srv.URL + "/new"
			c := newClient(t, srv.URL+"/old", client.WithPollingOnly())

			_, err := c.Submit(testCtx(t), client.SubmitRequest{Generate: &client.GenerateRequest{Model: "m", Prompt: "hi"}})
			if err == nil || !strings.Contains(err.Error(), "redirected") || !strings.Contains(err.Error(), moved+"/jobs") {
				t.Fatalf("Submit through a %d: err = %v, want one naming the redirect to %s/jobs", code, err, moved)
			}
			_, err = c.Cancel(testCtx(t), "01JGJ4Q2R0000000000000000A")
			if err == nil || !strings.Contains(err.Error(), "redirected") {
				t.Fatalf("Cancel through a %d: err = %v, want one naming the redirect", code, err)
			}
			// A GET follows the redirect as before.
			if _, err := c.Job(testCtx(t), "01JGJ4Q2R0000000000000000A"); err != nil {
				t.Fatalf("Job through a %d: %v", code, err)
			}
		})
	}
}
