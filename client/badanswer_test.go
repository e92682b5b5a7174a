package client_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestAnswersAreChecked: an answer that is valid JSON but not what foreman answers (null,
// an empty object, a job without id or with an unknown state, a stream without its last
// chunk) is an error, not an empty success.
func TestAnswersAreChecked(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	for name, body := range map[string]string{
		"null":          `null`,
		"empty object":  `{}`,
		"no state":      `{"id":"` + id + `","model":"m"}`,
		"unknown state": `{"id":"` + id + `","state":"sleeping"}`,
		"no id":         `{"state":"done"}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			answer := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }
			list := func(w http.ResponseWriter, _ *http.Request) {
				if body == "null" {
					_, _ = io.WriteString(w, body)
					return
				}
				_, _ = io.WriteString(w, `{"jobs":[`+body+`]}`)
			}
			queue := func(w http.ResponseWriter, _ *http.Request) {
				if body == "null" {
					_, _ = io.WriteString(w, body)
					return
				}
				_, _ = io.WriteString(w, `{"running":`+body+`,"total":0}`)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("GET /jobs/{id}", answer)
			mux.HandleFunc("DELETE /jobs/{id}", answer)
			mux.HandleFunc("GET /jobs", list)
			mux.HandleFunc("GET /queue", queue)
			mux.HandleFunc("POST /api/chat", answer)
			mux.HandleFunc("POST /api/generate", answer)
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL, client.WithPollingOnly())
			for call, f := range map[string]func() (any, error){
				"Job":    func() (any, error) { return c.Job(testCtx(t), id) },
				"Cancel": func() (any, error) { return c.Cancel(testCtx(t), id) },
				"Jobs":   func() (any, error) { return c.Jobs(testCtx(t), client.JobFilter{}) },
				"Queue":  func() (any, error) { return c.Queue(testCtx(t), 0) },
				"Wait":   func() (any, error) { return c.Wait(testCtx(t), id) },
				"Watch":  func() (any, error) { return c.Watch(testCtx(t), id) },
				"Chat": func() (any, error) {
					return c.Chat(testCtx(t), client.ChatRequest{Model: "m"}, nil)
				},
				"Generate": func() (any, error) {
					return c.Generate(testCtx(t), client.GenerateRequest{Model: "m"}, nil)
				},
			} {
				if v, err := f(); err == nil {
					t.Errorf("%s = %+v, nil; want an error", call, v)
				}
			}
		})
	}
	// An empty answer to a stream.
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL)
	if r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "m"}, nil); err == nil {
		t.Errorf("Chat of an empty answer = %+v, nil; want an error", r)
	}
}
