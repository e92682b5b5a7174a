package client_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestAnswersAreChecked: an answer that is valid JSON but not what foreman answers (null,
// an empty object, a job without id or state, a stream without a chunk of Ollama's) is an
// error, not an empty success. (A state the client does not know passes: a newer
// foreman's.)
func TestAnswersAreChecked(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	for name, body := range map[string]string{
		"null":         `null`,
		"empty object": `{}`,
		"no state":     `{"id":"` + id + `","model":"m"}`,
		"no id":        `{"state":"done"}`,
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
			} {
				if v, err := f(); err == nil {
					t.Errorf("%s = %+v, nil; want an error", call, v)
				}
			}
		})
	}
	// A chat or generate answer without a chunk of Ollama's (each names its model).
	for name, body := range map[string]string{"empty": ``, "null": `null`, "empty object": `{}`, "null lines": "null\nnull\n"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL)
		if r, err := c.Chat(testCtx(t), client.ChatRequest{Model: "m"}, nil); err == nil {
			t.Errorf("Chat of a %s answer = %+v, nil; want an error", name, r)
		}
		if r, err := c.Generate(testCtx(t), client.GenerateRequest{Model: "m"}, nil); err == nil {
			t.Errorf("Generate of a %s answer = %+v, nil; want an error", name, r)
		}
	}
}

// A stream that ends without its last chunk ("done": true), as Ollama's may when it stops
// a generation that repeats itself, is returned as it came, Done false.
func TestChatCutShortReturnsWhatCame(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"he"},"done":false}`+"\n"+
			`{"model":"m","message":{"role":"assistant","content":"llo"},"done":false}`+"\n")
	}))
	t.Cleanup(srv.Close)
	r, err := newClient(t, srv.URL).Chat(testCtx(t), client.ChatRequest{Model: "m"}, nil)
	if err != nil || r.Message.Content != "hello" || r.Done {
		t.Fatalf("Chat = %+v, %v; want the content so far, not done", r, err)
	}
}

// A waiting job without id is an error in either list of GET /queue: the jobs this
// foreman runs (queued) and those it leaves to other Macs (waiting_elsewhere).
func TestQueueWaitingJobWithoutIDIsAnError(t *testing.T) {
	t.Parallel()
	for _, list := range []string{"queued", "waiting_elsewhere"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, `{"running":null,"`+list+`":[{"model":"m","kind":"chat"}],"total":0}`)
		}))
		t.Cleanup(srv.Close)
		c := newClient(t, srv.URL, client.WithPollingOnly())
		if q, err := c.Queue(testCtx(t), 0); err == nil || !strings.Contains(err.Error(), "without id") {
			t.Errorf("%s with a job without id: %+v, %v; want an error", list, q, err)
		}
	}
}

// A server that answers GET or DELETE /jobs/{id} with another job's record (a cache or
// proxy gone wrong, a server posing as foreman) does not make that job's result, or its
// state, this job's: Job, Cancel, Wait and Watch fail.
func TestAnotherJobsRecordIsAnError(t *testing.T) {
	t.Parallel()
	const asked, other = "01JGJ4Q2R0000000000000000A", "01JGJ4Q2R0000000000000000B"
	answer := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"`+other+`","kind":"chat","model":"m","state":"done","attempts":1,`+
			`"created_at":"2025-01-02T03:04:05Z","result":{"model":"m","message":{"role":"assistant","content":"not yours"},"done":true}}`)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jobs/{id}", answer)
	mux.HandleFunc("DELETE /jobs/{id}", answer)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	for call, f := range map[string]func() (any, error){
		"Job":    func() (any, error) { return c.Job(testCtx(t), asked) },
		"Cancel": func() (any, error) { return c.Cancel(testCtx(t), asked) },
		"Wait":   func() (any, error) { return c.Wait(testCtx(t), asked) },
		"Watch":  func() (any, error) { return c.Watch(testCtx(t), asked) },
	} {
		if v, err := f(); err == nil {
			t.Errorf("%s(%s) = %+v, nil; want an error (the answer is job %s's)", call, asked, v, other)
		}
	}
}
