package worker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// direct is the fake's own answer to body on path, straight, and its Content-Type.
func (tb *testBundle) direct(t *testing.T, path, body string) ([]byte, string) {
	t.Helper()
	var got [][]byte
	ct, err := tb.target.Stream(ctxT(t), path, []byte(body), func(f []byte) error {
		got = append(got, f)
		return nil
	})
	if err != nil {
		t.Fatalf("direct %s: %v", path, err)
	}
	return bytes.Join(got, nil), ct
}

// streamedCalls counts the fake's calls on path whose body asked for a stream.
func streamedCalls(t *testing.T, fake *ollamatest.Server, path string) (streamed, all int) {
	t.Helper()
	for _, c := range fake.Calls() {
		if c.Path != path {
			continue
		}
		var v struct {
			Stream *bool `json:"stream"`
		}
		if err := json.Unmarshal(c.Body, &v); err != nil {
			t.Fatalf("call body %s: %v", c.Body, err)
		}
		all++
		if v.Stream != nil && *v.Stream {
			streamed++
		}
	}
	return streamed, all
}

// A chat or generate its caller asked not to stream is called streamed (ADR-0050), and
// the answer the caller gets, and the job keeps, is the one Ollama answers the
// non-streamed call: byte for byte, with its Content-Type, logprobs included.
func TestNonStreamedAnswerIsAssembledFromAStream(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		kind broker.Kind
		body string
	}{
		{"chat", broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"say <a> & \"b\""}]}`},
		{"chat with logprobs", broker.KindChat, `{"model":"tiny-a","stream":false,"logprobs":true,"messages":[{"role":"user","content":"hi"}]}`},
		{"generate", broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","Stream":false}`},
		{"generate with logprobs", broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","stream":false,"logprobs":true}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(5)})
			want, wantCT := tb.direct(t, tt.kind.Path(), tt.body)
			tb.start(t, worker.Config{})
			j, stream := tb.submitSync(t, tt.kind, tt.body)
			frames, final := stream.untilFinal(t)
			if final.Header.Get(broker.HeaderFinal) != "done" {
				t.Fatalf("final marker %v", final.Header)
			}
			got := joined(frames)
			if !bytes.Equal(got, want) {
				t.Errorf("answer\n %s\nwant Ollama's non-streamed one\n %s", got, want)
			}
			if ct := frames[0].Header.Get(broker.HeaderContentType); ct != wantCT {
				t.Errorf("content type %q, want %q", ct, wantCT)
			}
			if rec := tb.waitState(t, j.ID, broker.StateDone); !bytes.Equal(rec.Result, want) {
				t.Errorf("result %s, want %s", rec.Result, want)
			}
			// The direct call did not stream; the job's did.
			if streamed, all := streamedCalls(t, tb.fake, tt.kind.Path()); streamed != 1 || all != 2 {
				t.Errorf("%d of %d calls streamed, want the job's 1 of 2", streamed, all)
			}
		})
	}
}

// A runner that hangs mid-answer sends nothing more while Ollama's API answers on. A
// non-streamed call would wait for it the whole non-stream limit; assembled from a
// stream, the call is given up at the stream's idle limit, and the next attempt answers.
func TestRunnerHungMidNonStreamedAnswerIsGivenUpAtTheIdleLimit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi"}`},
	} {
		var hung atomic.Bool
		tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(6), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
			if i == 3 && hung.CompareAndSwap(false, true) {
				<-ctx.Done() // the first call's runner stops at its fourth token for good
				return ctx.Err()
			}
			return nil
		})})
		j := tb.submit(t, "tiny-a", tt.kind, tt.body)
		states := watchStates(t, tb.b.Conn, j.ID)
		tb.start(t, worker.Config{FirstByteTimeout: time.Hour, StreamIdleTimeout: testIdle, NonStreamTimeout: time.Hour})
		rec := tb.waitState(t, j.ID, broker.StateDone)
		if rec.Attempt != 2 {
			t.Errorf("%s: done at attempt %d, want 2", tt.kind, rec.Attempt)
		}
		if seen := states.until(t); !contains(seen, broker.StateRetrying) {
			t.Errorf("%s: states %v: the hung attempt was not retried", tt.kind, seen)
		}
		want, _ := tb.direct(t, tt.kind.Path(), tt.body)
		var g, w any
		if json.Unmarshal(rec.Result, &g) != nil || json.Unmarshal(want, &w) != nil || fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("%s: result %s, want %s", tt.kind, rec.Result, want)
		}
	}
}

// An error Ollama ends its stream with (its template failing, say) is a status to a
// non-streamed call. So is it to the assembled one: the job fails with the message and
// status 500, and no part of the answer reaches the caller.
func TestErrorLineOfAnAssembledAnswerFailsTheJob(t *testing.T) {
	t.Parallel()
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	tb.fake.FailNext(1, ollamatest.StreamError("template: :1: function \"bad\" not defined"))
	j, stream := tb.submitSync(t, broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if len(frames) != 0 {
		t.Errorf("%d frames reached the caller before the error, want none", len(frames))
	}
	h := final.Header
	if h.Get(broker.HeaderFinal) != "failed" || h.Get(broker.HeaderError) != "template: :1: function \"bad\" not defined" || h.Get(broker.HeaderStatus) != "500" {
		t.Errorf("final marker %v, want failed with the stream's error and status 500", h)
	}
	if rec := tb.waitState(t, j.ID, broker.StateFailed); rec.Error != "template: :1: function \"bad\" not defined" {
		t.Errorf("record error %q", rec.Error)
	}
}

// What the target does to a non-streamed call, the assembled call gets from its stream
// and answers the same: a stream that ends without done:true (the last line, done:false,
// texts joined), an error line (status 500 with the message).
func TestAssembledAnswerOfAnEndedStreamIsOllamas(t *testing.T) {
	t.Parallel()
	body := `{"model":"tiny-a","stream":false,"logprobs":true,"messages":[{"role":"user","content":"hi"}]}`
	for _, f := range []ollamatest.Failure{ollamatest.StreamNoDone, ollamatest.StreamError("template: :1: function \"bad\" not defined")} {
		tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(4)})
		tb.fake.FailNext(1, f)
		var want []byte
		_, derr := tb.target.Stream(ctxT(t), "/api/chat", []byte(body), func(b []byte) error {
			want = append(want, b...)
			return nil
		})
		tb.fake.FailNext(1, f)
		tb.start(t, worker.Config{})
		_, stream := tb.submitSync(t, broker.KindChat, body)
		frames, final := stream.untilFinal(t)
		got := joined(frames)
		if derr != nil {
			// Ollama's status and message, and nothing of the answer.
			var he *ollama.HTTPError
			if !errors.As(derr, &he) {
				t.Fatalf("%s: direct: %v", f, derr)
			}
			h := final.Header
			if len(got) != 0 || h.Get(broker.HeaderFinal) != "failed" || h.Get(broker.HeaderError) != he.Message || h.Get(broker.HeaderStatus) != strconv.Itoa(he.StatusCode) {
				t.Errorf("%s: answer %q, final %v; want no answer, failed with %d %q", f, got, h, he.StatusCode, he.Message)
			}
			continue
		}
		if final.Header.Get(broker.HeaderFinal) != "done" || !bytes.Equal(got, want) {
			t.Errorf("%s: final %v, answer\n %s\nwant Ollama's\n %s", f, final.Header, got, want)
		}
	}
}

// A target that is not Ollama fails a non-streamed call's job with what it sent, its own
// Content-Type and first bytes, as it would have failed the call made as asked; nothing
// of it reaches the caller.
func TestAssembledCallOfANonOllamaTargetFailsWithItsAnswer(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, "<html>not ollama</html>\n"))
	_, stream := tb.submitSync(t, broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	want := `bad answer from the target (Content-Type "application/x-ndjson"): a stream with no JSON frame: "<html>not ollama</html>\n"`
	if len(frames) != 0 || final.Header.Get(broker.HeaderFinal) != "failed" || final.Header.Get(broker.HeaderError) != want {
		t.Errorf("%d frames, final %v; want none, failed with %q", len(frames), final.Header, want)
	}
}

// The OpenAI-compatible chat and completion, the Responses API and the Anthropic message,
// asked not to stream (their default), are called streamed (the chat and completion with
// the usage asked for), and answered as Ollama answers the non-streamed call: the same
// completion, response or message, usage included, as application/json ended by a
// newline (Ollama's middlewares write it with a json.Encoder). A response's members come
// in the non-streamed answer's order, not in the stream's.
func TestNonStreamedSSEAnswerIsAssembledFromAStream(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":false}}`},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","stream":false}`},
		{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","input":[{"role":"user","content":[{"type":"input_text","text":"<hi> & bye"}]}],"instructions":"be brief","temperature":0.5,"reasoning":{"effort":"low"},"text":{"format":{"type":"json_schema","name":"x","schema":{"type":"object","required":["b","a"]},"strict":true}},"tools":[{"type":"function","name":"f","description":"d","parameters":{"type":"object"}}]}`},
	} {
		tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(5)})
		want, wantCT := tb.direct(t, tt.kind.Path(), tt.body)
		tb.start(t, worker.Config{})
		_, stream := tb.submitSync(t, tt.kind, tt.body)
		frames, final := stream.untilFinal(t)
		got := joined(frames)
		if final.Header.Get(broker.HeaderFinal) != "done" || len(frames) == 0 {
			t.Fatalf("%s: final %v after %d frames", tt.kind, final.Header, len(frames))
		}
		if ct := frames[0].Header.Get(broker.HeaderContentType); ct != wantCT || wantCT != "application/json" {
			t.Errorf("%s: content type %q, want Ollama's %q", tt.kind, ct, wantCT)
		}
		if !bytes.HasSuffix(got, []byte("}\n")) {
			t.Errorf("%s: answer %q does not end as Ollama's does", tt.kind, got)
		}
		if !bytes.Equal(got, want) || !bytes.Contains(want, []byte(`"usage":{`)) {
			t.Errorf("%s: answer\n %s\nwant Ollama's non-streamed one, usage included\n %s", tt.kind, got, want)
		}
		var calls []ollamatest.Call
		for _, c := range tb.fake.Calls() {
			if c.Path == tt.kind.Path() {
				calls = append(calls, c)
			}
		}
		var sent struct {
			Stream  bool `json:"stream"`
			Options struct {
				IncludeUsage bool `json:"include_usage"`
			} `json:"stream_options"`
		}
		openAI := tt.kind == broker.KindOpenAIChat || tt.kind == broker.KindOpenAICompletion
		if len(calls) != 2 || json.Unmarshal(calls[1].Body, &sent) != nil || !sent.Stream || sent.Options.IncludeUsage != openAI {
			t.Errorf("%s: the job's call sent %s, want a stream with its usage", tt.kind, calls[len(calls)-1].Body)
		}
	}
}

// A loading job whose answer is assembled turns working when the answer begins, as a
// streamed one does at its first frame, not when it ends.
func TestAssembledAnswerMarksTheJobWorkingAsItBegins(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(6), ollamatest.WithBeforeToken(func(ctx context.Context, i int) error {
		if i == 3 {
			select { // the answer is under way and goes on once the test saw the job working
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})})
	j := tb.submit(t, "tiny-a", broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	states := watchStates(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	tb.waitState(t, j.ID, broker.StateWorking)
	close(release)
	tb.waitState(t, j.ID, broker.StateDone)
	if seen := states.until(t); !contains(seen, broker.StateLoading) {
		t.Errorf("states %v: the job did not load its model first", seen)
	}
}

// Ollama's OpenAI, Responses and Anthropic writers drop the error line of a runner that
// fails mid-answer: their stream just stops before its end ([DONE], response.completed,
// message_stop), where the non-streamed call gets a 500. An assembled answer cut so
// fails its attempt with a 500 (retried as a runner's death, ADR-0085: here the one
// attempt there is); it does not pass as whole, and nothing of it reaches the caller.
func TestAssembledSSEAnswerCutShortFailsTheJob(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi"}`},
		{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi"}`},
	} {
		tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(4)})
		tb.fake.FailNext(1, ollamatest.StreamNoDone)
		_, stream := tb.submitSync(t, tt.kind, tt.body)
		tb.start(t, worker.WithMaxAttempts(worker.Config{}, 1))
		frames, final := stream.untilFinal(t)
		h := final.Header
		if len(frames) != 0 || h.Get(broker.HeaderFinal) != "failed" || h.Get(broker.HeaderStatus) != "500" || !strings.Contains(h.Get(broker.HeaderError), "ended before its answer was complete") {
			t.Errorf("%s: %d frames, final %v; want none, failed with 500 for the cut stream", tt.kind, len(frames), h)
		}
	}
}

// A streamed /v1 answer relayed as it came that stops before its end (a runner that
// failed: Ollama's /v1 writers drop its error line) fails its job with the cut stream's
// 500, as the non-streamed call's: it is not stored as a whole answer, done. The caller
// has the frames that came, then the failure.
func TestStreamedSSEAnswerCutShortFailsTheJob(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kind broker.Kind
		body string
	}{
		{broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAICompletion, `{"model":"tiny-a","stream":true,"prompt":"hi"}`},
		{broker.KindAnthropicMessages, `{"model":"tiny-a","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`},
		{broker.KindOpenAIResponses, `{"model":"tiny-a","stream":true,"input":"hi"}`},
	} {
		tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(4)})
		tb.fake.FailNext(1, ollamatest.StreamNoDone)
		j, stream := tb.submitSync(t, tt.kind, tt.body)
		tb.start(t, worker.Config{})
		frames, final := stream.untilFinal(t)
		h := final.Header
		if len(frames) == 0 || h.Get(broker.HeaderFinal) != "failed" || h.Get(broker.HeaderStatus) != "500" || !strings.Contains(h.Get(broker.HeaderError), "ended before its answer was complete") {
			t.Errorf("%s: %d frames, final %v; want the frames, then failed with 500 for the cut stream", tt.kind, len(frames), h)
		}
		if rec := tb.waitState(t, j.ID, broker.StateFailed); len(rec.Result) != 0 {
			t.Errorf("%s: a failed job with a result: %s", tt.kind, rec.Result)
		}
	}
}

// submitSync submits a sync job of kind with body for tiny-a, watching its answer from
// before it is submitted (a running worker may end it before a later subscription).
func (tb *testBundle) submitSync(t *testing.T, kind broker.Kind, body string) (*broker.Job, *streamWatch) {
	t.Helper()
	j := &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: kind, Sync: true}
	stream := watchStream(t, tb.b.Conn, j.ID)
	if _, err := tb.b.Store.Submit(ctxT(t), j, []byte(body)); err != nil {
		t.Fatal(err)
	}
	return j, stream
}

// joined is the answer the frames carry, their data one after the other.
func joined(frames []*nats.Msg) []byte {
	var out []byte
	for _, f := range frames {
		out = append(out, f.Data...)
	}
	return out
}
