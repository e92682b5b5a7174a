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

// A UTF-8 byte order mark before a stream's first byte (a proxy or server that writes
// one) is no part of its first frame: an SSE client drops it (the event stream rules),
// as ollama-js's TextDecoder does for NDJSON, where Ollama's Go client fails the call on
// it. The caller gets the frames without it, and the job's result has the first line's
// text. Before, the first frame, not JSON with it, was held and then relayed with it (a
// caller's JSON parse of its first line failed), and the result lost that line's text.
func TestByteOrderMarkBeforeAStreamIsDropped(t *testing.T) {
	t.Parallel()
	const bom = "\xEF\xBB\xBF"
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
		frames  []string // the target's, after its BOM
		relayed bool     // the caller gets them as they came (not an assembled answer)
	}{
		{"native streamed", broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`,
			[]string{line("a", false), line("b", false), line("", true)}, true},
		{"native assembled", broker.KindChat, `{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`,
			[]string{line("a", false), line("b", false), line("", true)}, false},
		{"openai streamed", broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
			[]string{chunk("a"), chunk("b"), "data: [DONE]\n\n"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			ct := ollama.ContentTypeNDJSON
			if c.kind == broker.KindOpenAIChat {
				ct = ollama.ContentTypeSSE
			}
			tb.fake.FailNext(1, ollamatest.BadAnswer(ct, bom+strings.Join(c.frames, "")))
			j, stream := tb.submitSync(t, c.kind, c.body)
			tb.start(t, worker.Config{})
			frames, final := stream.untilFinal(t)
			var got []string
			for _, f := range frames {
				got = append(got, string(f.Data))
			}
			if final.Header.Get(broker.HeaderFinal) != "done" {
				t.Fatalf("final marker %v, want done", final.Header)
			}
			if c.relayed && strings.Join(got, "|") != strings.Join(c.frames, "|") {
				t.Errorf("relayed %q, want %q", got, c.frames)
			}
			if strings.Contains(strings.Join(got, ""), bom) {
				t.Errorf("the BOM reached the caller: %q", got)
			}
			rec := tb.waitState(t, j.ID, broker.StateDone)
			if !strings.Contains(string(rec.Result), `"content":"ab"`) {
				t.Errorf("result %s, want the text of every line", rec.Result)
			}
		})
	}
}

// NDJSON whose lines end with a CR alone is one line (ADR-0135), as Ollama's Go client
// reads it, which fails the call on it: the job fails at the stream's end as a bad
// answer naming what came, nothing reaches a caller, and the target is not asked again.
func TestCROnlyNDJSONIsABadAnswer(t *testing.T) {
	t.Parallel()
	line := func(s string, done bool) string {
		return `{"model":"tiny-a","message":{"role":"assistant","content":"` + s + `"},"done":` + map[bool]string{false: "false", true: "true"}[done] + "}\r"
	}
	for _, body := range []string{
		`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"tiny-a","stream":false,"messages":[{"role":"user","content":"hi"}]}`,
	} {
		tb := setup(t)
		tb.fake.FailNext(1, ollamatest.BadAnswer(ollama.ContentTypeNDJSON, line("a", false)+line("b", false)+line("", true)))
		j, stream := tb.submitSync(t, broker.KindChat, body)
		tb.start(t, worker.Config{})
		frames, final := stream.untilFinal(t)
		msg := final.Header.Get(broker.HeaderError)
		if len(frames) != 0 || final.Header.Get(broker.HeaderFinal) != "failed" || !strings.Contains(msg, "bad answer from the target") || !strings.Contains(msg, `\"content\":\"a\"},\"done\":false}\r{`) {
			t.Errorf("%s: %d frames, final %v; want none, failed as a bad answer quoting the CR-ended lines", body, len(frames), final.Header)
		}
		if rec := tb.waitState(t, j.ID, broker.StateFailed); rec.Attempt != 1 || len(inferenceCalls(tb.fake)) != 1 {
			t.Errorf("%s: attempt %d, %d calls, want 1 and 1", body, rec.Attempt, len(inferenceCalls(tb.fake)))
		}
	}
}
