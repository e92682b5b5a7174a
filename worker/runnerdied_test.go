package worker_test

import (
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A runner the system killed (on a Mac, for memory) or that crashed is Ollama's word
// that the model's process died, not an answer to the request: Ollama starts a new one
// at the next request. Each of its ways of saying so (a status of a call, the last line
// of a stream, a /v1 stream that stopped before its end) is an attempt that failed, and
// the job is retried (ADR-0085): here the second attempt answers. Before, each failed
// the job at once.
func TestARunnerThatDiedIsRetried(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		fail ollamatest.Failure
		kind broker.Kind
		body string
	}{
		"status": {ollamatest.FailStatus(500, "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, check ollama server logs for details"),
			broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		"stream line": {ollamatest.StreamError("an error was encountered while running the model: unexpected EOF"),
			broker.KindChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		"load": {ollamatest.FailStatus(500, "llama runner process has terminated: signal: killed"),
			broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","stream":false}`},
		// Ollama's OpenAI middleware rewrites the chat handler's error into its own shape.
		"v1 status": {ollamatest.StatusAnswer(500, "application/json", `{"error":{"message":"llama runner process has terminated: signal: killed","type":"api_error","param":null,"code":null}}`+"\n"),
			broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		"v1 answer status": {ollamatest.StatusAnswer(500, "application/json", `{"error":{"message":"model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, check ollama server logs for details","type":"api_error","param":null,"code":null}}`+"\n"),
			broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		"anthropic status": {ollamatest.StatusAnswer(500, "application/json", `{"type":"error","error":{"type":"api_error","message":"llama runner process has terminated: signal: killed"}}`+"\n"),
			broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`},
		"v1 answer cut": {ollamatest.StreamNoDone,
			broker.KindOpenAIChat, `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		"v1 stream cut": {ollamatest.StreamNoDone,
			broker.KindOpenAIChat, `{"model":"tiny-a","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
			tb.fake.FailNext(1, c.fail)
			j := tb.submit(t, "tiny-a", c.kind, c.body)
			tb.start(t, worker.Config{})
			got := tb.waitEnded(t, j.ID)
			if got.State != broker.StateDone || got.Attempt != 2 {
				t.Errorf("job %s at attempt %d (%q), want done at attempt 2", got.State, got.Attempt, got.Error)
			}
			tb.waitQueueEmpty(t)
		})
	}
}

// A runner that dies at every attempt fails the job once its attempts are used up, with
// Ollama's words and status; a sync caller that has part of the answer already fails at
// once, as after a stall: a second attempt cannot be spliced into its answer.
func TestARunnerThatKeepsDyingFailsTheJob(t *testing.T) {
	t.Parallel()
	const died = "an error was encountered while running the model: unexpected EOF"
	tb := setupFake(t, []ollamatest.Option{ollamatest.WithTokens(3)})
	tb.fake.FailNext(2, ollamatest.FailStatus(500, died))
	j := tb.chat(t, "tiny-a", 1)
	tb.start(t, worker.WithMaxAttempts(worker.Config{}, 2))
	got := tb.waitState(t, j.ID, broker.StateFailed)
	if got.Attempt != 2 || !strings.HasPrefix(got.Error, "attempts exhausted: ") || !strings.HasSuffix(got.Error, died) {
		t.Errorf("failed at attempt %d with %q, want attempt 2, its attempts exhausted by the runner's death", got.Attempt, got.Error)
	}
}
