package client_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// portalPage is the start of a captive portal's login page, which such a portal answers
// every request with, status 200.
const portalPage = "<!DOCTYPE html>\n<html><head><title>Guest Wi-Fi</title></head>\n<body><form action=\"/login\">"

// TestCaptivePortalAnswerIsNamed: a 200 answer that is no foreman JSON (a captive
// portal's page) is a *ForeignAnswerError (errors.Is ErrNotForeman) that names its status,
// Content-Type and start, and says it does not look like foreman; it was "client: decode
// GET /jobs: the answer is not a JSON object", which read as a bug of foreman's.
func TestCaptivePortalAnswerIsNamed(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, portalPage+strings.Repeat("<p>terms</p>\n", 200)+"</form></body></html>")
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	const id = "01JGJ4Q2R0000000000000000A"
	for call, f := range map[string]func() error{
		"Jobs":        func() error { _, err := c.Jobs(testCtx(t), client.JobFilter{}); return err },
		"Job":         func() error { _, err := c.Job(testCtx(t), id); return err },
		"Cancel":      func() error { _, err := c.Cancel(testCtx(t), id); return err },
		"Queue":       func() error { _, err := c.Queue(testCtx(t), 0); return err },
		"Tags":        func() error { _, err := c.Tags(testCtx(t)); return err },
		"Wait":        func() error { _, err := c.Wait(testCtx(t), id); return err },
		"SubmitAsync": func() error { _, err := c.SubmitAsync(testCtx(t), chatJob("m", "hi")); return err },
	} {
		err := f()
		var fe *client.ForeignAnswerError
		if !errors.Is(err, client.ErrNotForeman) || !errors.As(err, &fe) {
			t.Errorf("%s: %v; want a *ForeignAnswerError", call, err)
			continue
		}
		if fe.Status != http.StatusOK || fe.ContentType != "text/html; charset=utf-8" || !strings.HasPrefix(fe.Excerpt, "<!DOCTYPE html> <html><head><title>Guest Wi-Fi") {
			t.Errorf("%s: %+v; want status 200, the Content-Type and the page's start", call, fe)
		}
		msg := err.Error()
		for _, want := range []string{"200 OK", "Content-Type text/html", "Guest Wi-Fi", "does not look like foreman"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %q; want it to say %q", call, msg, want)
			}
		}
		if len(msg) > 600 {
			t.Errorf("%s: a message of %d bytes; want the page's start only", call, len(msg))
		}
	}
}

// TestForeignStreamIsNamed: a Chat or Generate answered by what is not foreman (a captive
// portal's page, another server's JSON, an empty 200) is a *ForeignAnswerError, as the
// non-streamed calls' are, its callback never handed that answer; it was "client: decode
// chat chunk: not a JSON object" (or "holds no chunk of Ollama's"), which read as a bug
// of foreman's. A stream of Ollama's chunks that goes wrong later is no foreign answer.
func TestForeignStreamIsNamed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, ctype, body, excerpt string
	}{
		{"portal page", "text/html; charset=utf-8", portalPage + strings.Repeat("<p>terms</p>\n", 200), "<!DOCTYPE html> <html><head><title>Guest Wi-Fi"},
		{"another server's object", "application/json", `{"status":"ok","version":"2.1"}` + "\n", `{"status":"ok","version":"2.1"}`},
		{"a JSON array", "application/json", `[{"id":1}]`, `[{"id":1}]`},
		{"a JSON string", "application/json", `"hello"`, `"hello"`},
		{"null", "application/json", "null\n", "null"},
		{"plain text", "text/plain", "OK", "OK"},
		{"empty", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tc.ctype != "" {
					w.Header().Set("Content-Type", tc.ctype)
				}
				_, _ = io.WriteString(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL)
			for call, f := range map[string]func() error{
				"Chat": func() error {
					_, err := c.Chat(testCtx(t), client.ChatRequest{Model: "m"}, func(r *client.ChatResponse) error {
						t.Errorf("Chat handed on %+v", r)
						return nil
					})
					return err
				},
				"Generate": func() error {
					_, err := c.Generate(testCtx(t), client.GenerateRequest{Model: "m"}, func(r *client.GenerateResponse) error {
						t.Errorf("Generate handed on %+v", r)
						return nil
					})
					return err
				},
			} {
				err := f()
				var fe *client.ForeignAnswerError
				if !errors.Is(err, client.ErrNotForeman) || !errors.As(err, &fe) {
					t.Errorf("%s: %v; want a *ForeignAnswerError", call, err)
					continue
				}
				path := map[string]string{"Chat": "/api/chat", "Generate": "/api/generate"}[call]
				if fe.Method != http.MethodPost || fe.Path != path || fe.Status != http.StatusOK || fe.ContentType != tc.ctype || !strings.HasPrefix(fe.Excerpt, tc.excerpt) {
					t.Errorf("%s: %+v; want POST %s, status 200, Content-Type %q and the answer's start %q", call, fe, path, tc.ctype, tc.excerpt)
				}
				if len(err.Error()) > 600 {
					t.Errorf("%s: a message of %d bytes; want the answer's start only", call, len(err.Error()))
				}
			}
		})
	}
	// Begun as Ollama's, the stream is foreman's: a bad line after it is not called foreign.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"he"},"done":false}`+"\n<html>\n")
	}))
	t.Cleanup(srv.Close)
	if _, err := newClient(t, srv.URL).Chat(testCtx(t), client.ChatRequest{Model: "m"}, nil); err == nil || errors.Is(err, client.ErrNotForeman) {
		t.Errorf("Chat of Ollama's chunk then a page: %v; want an error other than ErrNotForeman", err)
	}
}
