package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// fuzzJobID is the job every fuzzed call asks about.
const fuzzJobID = "01JGJ4Q2R0000000000000000A"

// fuzzCalls are the client calls FuzzClientAnswers drives; each returns what it decoded
// and checks what a success promises.
var fuzzCalls = []struct {
	name string
	call func(ctx context.Context, c *client.Client) error
}{
	{"Job", func(ctx context.Context, c *client.Client) error {
		j, err := c.Job(ctx, fuzzJobID)
		if err == nil && (j.ID != fuzzJobID || j.State == "") {
			return errors.New("Job returned a record of another job or without a state")
		}
		return nil
	}},
	{"Cancel", func(ctx context.Context, c *client.Client) error {
		j, err := c.Cancel(ctx, fuzzJobID)
		if err == nil && (j.ID != fuzzJobID || j.State == "") {
			return errors.New("Cancel returned a record of another job or without a state")
		}
		return nil
	}},
	{"Jobs", func(ctx context.Context, c *client.Client) error {
		l, err := c.Jobs(ctx, client.JobFilter{})
		if err == nil {
			for _, j := range l.Jobs {
				if j.ID == "" || j.State == "" {
					return errors.New("Jobs listed a record without an id or a state")
				}
			}
		}
		return nil
	}},
	{"Queue", func(ctx context.Context, c *client.Client) error {
		q, err := c.Queue(ctx, 0)
		if err == nil && q == nil {
			return errors.New("Queue returned nothing and no error")
		}
		if err == nil {
			_ = q.OwnTarget()
		}
		return nil
	}},
	{"Chat", func(ctx context.Context, c *client.Client) error {
		r, err := c.Chat(ctx, client.ChatRequest{Model: "m"}, nil)
		if err == nil && r.Model == "" {
			return errors.New("Chat returned an answer without a chunk of Ollama's")
		}
		return nil
	}},
	{"Generate", func(ctx context.Context, c *client.Client) error {
		r, err := c.Generate(ctx, client.GenerateRequest{Model: "m"}, nil)
		if err == nil && r.Model == "" {
			return errors.New("Generate returned an answer without a chunk of Ollama's")
		}
		return nil
	}},
	{"SubmitAsync", func(ctx context.Context, c *client.Client) error {
		id, err := c.SubmitAsync(ctx, client.SubmitRequest{Generate: &client.GenerateRequest{Model: "m", Prompt: "p"}})
		if err == nil && id == "" {
			return errors.New("SubmitAsync returned no id and no error")
		}
		return nil
	}},
	{"Wait", func(ctx context.Context, c *client.Client) error {
		r, err := c.Wait(ctx, fuzzJobID)
		if err == nil {
			if r.Job == nil || r.Job.ID != fuzzJobID || r.Job.State != client.StateDone {
				return errors.New("Wait returned a result that is not this job's, done")
			}
			_ = r.Text()
		}
		return nil
	}},
	{"Artifact", func(ctx context.Context, c *client.Client) error {
		_, err := c.Artifact(ctx, fuzzJobID, "result.json")
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status/100 == 2 {
			return errors.New("a 2xx answer became an APIError")
		}
		return nil
	}},
	{"Tags", func(ctx context.Context, c *client.Client) error {
		_, err := c.Tags(ctx)
		_ = err
		return nil
	}},
}

// FuzzClientAnswers answers every request of a client call with one fuzzed answer
// (status, Content-Type, Retry-After and body) from a server on loopback, as a broken
// proxy or a server posing as foreman could. The call never panics, returns (a wait is
// cut off by its context after a few polls, which is no failure), and what it returns
// without an error is what its documentation promises.
// Run with: go test -run '^$' -fuzz '^FuzzClientAnswers$' -fuzztime 30s ./client
func FuzzClientAnswers(f *testing.F) {
	const rec = `{"id":"` + fuzzJobID + `","kind":"chat","model":"m","state":"done","attempts":1,"created_at":"2025-01-02T03:04:05Z","result":{"model":"m","message":{"role":"assistant","content":"hi"},"done":true}}`
	f.Add(uint8(0), uint16(200), "application/json", "", []byte(rec))
	f.Add(uint8(1), uint16(200), "application/json", "", []byte(rec))
	f.Add(uint8(2), uint16(200), "application/json", "", []byte(`{"jobs":[`+rec+`],"next_cursor":"x"}`))
	f.Add(uint8(3), uint16(200), "application/json", "", []byte(`{"running":null,"queued":[],"total":0,"targets":[{"name":"a","own":true,"reachable":true}]}`))
	f.Add(uint8(4), uint16(200), "application/x-ndjson", "", []byte("{\"model\":\"m\",\"message\":{\"content\":\"a\"}}\n{\"model\":\"m\",\"done\":true}\n"))
	f.Add(uint8(5), uint16(200), "application/x-ndjson", "", []byte("{\"model\":\"m\",\"response\":\"a\"}\n{\"error\":\"boom\"}\n"))
	f.Add(uint8(6), uint16(202), "application/json", "", []byte(`{"job_id":"`+fuzzJobID+`"}`))
	f.Add(uint8(7), uint16(200), "application/json", "", []byte(`{"id":"`+fuzzJobID+`","state":"done","artifacts":[{"name":"result.json","data":"e30=","encoding":"base64"}]}`))
	f.Add(uint8(7), uint16(200), "application/json", "", []byte(`{"id":"`+fuzzJobID+`","state":"failed","error":"x"}`))
	f.Add(uint8(8), uint16(503), "application/json", "1", []byte(`{"error":"busy"}`))
	f.Add(uint8(9), uint16(200), "application/json", "", []byte(`{"models":[{"name":"m"}]}`))
	f.Add(uint8(0), uint16(429), "text/plain", "Wed, 21 Oct 2015 07:28:00 GMT", []byte("slow down"))
	f.Add(uint8(4), uint16(200), "application/x-ndjson", "", []byte(`{"model":"m"`))
	f.Fuzz(func(t *testing.T, which uint8, status uint16, ctype, retryAfter string, body []byte) {
		call := fuzzCalls[int(which)%len(fuzzCalls)]
		code := int(status)
		if code < 200 || code > 599 {
			code = 200 + code%400 // 1xx is no final answer
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var requests atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if requests.Add(1) > 4 {
				cancel() // a wait that polls on: enough seen
			}
			if ctype != "" && validHeader(ctype) {
				w.Header().Set("Content-Type", ctype)
			}
			if retryAfter != "" && validHeader(retryAfter) {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(code)
			_, _ = w.Write(body)
		}))
		defer srv.Close()
		c, err := client.New(srv.URL, client.WithPollingOnly(), client.WithPollInterval(time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		done := make(chan error, 1)
		go func() { done <- call.call(ctx, c) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s, answered %d %q %q: %v", call.name, code, ctype, body, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s, answered %d %q %q: no return within a minute", call.name, code, ctype, body)
		}
	})
}

// validHeader reports whether v can be sent as a header value.
func validHeader(v string) bool {
	for _, r := range v {
		if r < ' ' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return len(v) < 1024
}
