package worker_test

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An error frame in the middle of a 2xx stream, more frames after it, ends the answer
// where Ollama's client ends it (api.Client.stream returns at the first line with an
// "error"; an OpenAI SDK raises at the error event): the job fails with that error, the
// frames after it reach no caller and make no result, and a non-streamed call's answer
// is the first error's status, as Ollama's own non-streamed handler answers. Before, the
// worker judged the last frame only: the stream relayed past its error and the job ended
// done with a result, the error lost.
func TestErrorFrameMidStreamEndsTheAnswer(t *testing.T) {
	t.Parallel()
	line := func(s string, done bool) string {
		return `{"model":"tiny-a","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"` + s + `"},"done":` + map[bool]string{false: "false", true: "true"}[done] + "}\n"
	}
	chunk := func(s string) string {
		return `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny-a","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"` + s + `"},"finish_reason":null}]}` + "\n\n"
	}
	cases := []struct {
		name    string
		kind    broker.Kind
		body    string
		answer  ollamatest.Failure
		relayed []string // the frames a caller gets
		status  string   // the final marker's status
	}{
		{"native streamed", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`,
			ollamatest.BadAnswer(ollama.ContentTypeNDJSON, line("a", false)+`{"error":"boom"}`+"\n"+line("b", false)+`{"error":"later"}`+"\n"+line("", true)),
			[]string{line("a", false), `{"error":"boom"}` + "\n"}, ""},
		{"native assembled", broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`,
			ollamatest.BadAnswer(ollama.ContentTypeNDJSON, line("a", false)+`{"error":"boom"}`+"\n"+line("b", false)+`{"error":"later"}`+"\n"+line("", true)),
			nil, "500"},
		{"openai streamed", broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			ollamatest.BadAnswer(ollama.ContentTypeSSE, chunk("a")+`data: {"error":{"message":"boom"}}`+"\n\n"+chunk("b")+"data: [DONE]\n\n"),
			[]string{chunk("a"), `data: {"error":{"message":"boom"}}` + "\n\n"}, ""},
	}
	for _, c := range cases {
		for _, sync := range []bool{false, true} {
			t.Run(c.name+map[bool]string{false: " async", true: " sync"}[sync], func(t *testing.T) {
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
				var got []string
				for _, f := range frames {
					got = append(got, string(f.Data))
				}
				if strings.Join(got, "|") != strings.Join(c.relayed, "|") {
					t.Errorf("relayed %q, want %q", got, c.relayed)
				}
				h := final.Header
				if h.Get(broker.HeaderFinal) != "failed" || h.Get(broker.HeaderError) != "boom" || h.Get(broker.HeaderStatus) != c.status {
					t.Errorf("final marker %v, want failed with the first error, status %q", h, c.status)
				}
				rec := tb.waitState(t, j.ID, broker.StateFailed)
				if rec.Error != "boom" || rec.Result != nil || rec.Attempt != 1 {
					t.Errorf("record: error %q result %s attempt %d, want boom, no result, attempt 1", rec.Error, rec.Result, rec.Attempt)
				}
				if n := len(inferenceCalls(tb.fake)); n != 1 {
					t.Errorf("%d calls, want 1", n)
				}
			})
		}
	}
}
