package worker_test

import (
	"errors"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A 2xx answer no Ollama sends (a proxy routed to the wrong port, another service on
// Ollama's, garbage) fails the job at once, naming what came: nothing of it reaches a
// caller, no result is stored, and the target is not asked again (it would answer the same).
func TestBadAnswerFailsJob(t *testing.T) {
	t.Parallel()
	chat := `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	cases := []struct {
		name   string
		kind   broker.Kind
		body   string
		answer ollamatest.Failure
		want   string // in the job's error
	}{
		{"non-streamed text", broker.KindOpenAIChat, chat,
			ollamatest.BadAnswer("text/plain; charset=utf-8", "Ollama is running"), `"Ollama is running"`},
		{"empty body", broker.KindOpenAIChat, chat,
			ollamatest.BadAnswer("application/json", ""), "not JSON"},
		{"NDJSON garbage", broker.KindChat, chat,
			ollamatest.BadAnswer(ollama.ContentTypeNDJSON, "<html>garbage\nmore garbage\n"), "<html>garbage"},
		{"empty NDJSON stream", broker.KindChat, chat,
			ollamatest.BadAnswer(ollama.ContentTypeNDJSON, ""), "no JSON frame"},
		{"SSE garbage", broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"stream":true}`,
			ollamatest.BadAnswer(ollama.ContentTypeSSE, "data: garbage\n\ndata: [DONE]\n\n"), "data: garbage"},
	}
	for _, c := range cases {
		for _, sync := range []bool{false, true} {
			name := c.name + map[bool]string{false: " async", true: " sync"}[sync]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				tb := setup(t)
				tb.fake.FailNext(1, c.answer)
				j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: c.kind, Sync: sync}, []byte(c.body))
				if err != nil {
					t.Fatal(err)
				}
				stream := watchStream(t, tb.b.Conn, j.ID)
				tb.start(t, worker.Config{})
				frames, final := stream.untilFinal(t)
				if len(frames) != 0 {
					t.Errorf("%d frames of the bad answer relayed", len(frames))
				}
				msg := final.Header.Get(broker.HeaderError)
				if final.Header.Get(broker.HeaderFinal) != "failed" || !strings.Contains(msg, "bad answer from the target") || !strings.Contains(msg, c.want) {
					t.Errorf("final marker headers %v, want failed naming the answer (%s)", final.Header, c.want)
				}
				got := tb.waitState(t, j.ID, broker.StateFailed)
				if got.Error != msg || got.Result != nil || got.Attempt != 1 {
					t.Errorf("record: error %q result %s attempt %d, want the marker's error, no result, attempt 1", got.Error, got.Result, got.Attempt)
				}
				if _, _, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, broker.ResultArtifact); !errors.Is(err, broker.ErrArtifactNotFound) {
					t.Errorf("result artifact: %v, want none", err)
				}
				if n := len(inferenceCalls(tb.fake)); n != 1 {
					t.Errorf("%d calls, want 1 (no retry)", n)
				}
				tb.waitQueueEmpty(t)
			})
		}
	}
}

// Lines that are not JSON ahead of the first one that is (a blank line, an SSE comment)
// are held, not lost: once a frame parses they go out before it, byte for byte.
func TestFramesBeforeTheFirstJSONFrameAreRelayed(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	line := `{"model":"tiny-a","message":{"role":"assistant","content":"hi"},"done":true}`
	tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, "\n"+line+"\n"))
	j := tb.chat(t, "tiny-a", 1)
	stream := watchStream(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	frames, final := stream.untilFinal(t)
	if len(frames) != 2 || string(frames[0].Data) != "\n" || string(frames[1].Data) != line+"\n" || final.Header.Get(broker.HeaderFinal) != "done" {
		t.Fatalf("%d frames, final %v", len(frames), final.Header)
	}
	if got := tb.waitState(t, j.ID, broker.StateDone); !strings.Contains(string(got.Result), `"content":"hi"`) {
		t.Errorf("result %s", got.Result)
	}
}
