package ollamatest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// tokenCost is the fake's nominal time per token, used for deterministic durations.
const tokenCost = time.Millisecond

// prepare loads the model, runs BeforeChat and waits for holds. It writes the
// error reply itself and returns the load duration.
func (s *Server) prepare(w http.ResponseWriter, r *http.Request, m Model) (time.Duration, bool) {
	return s.prepareWith(w, r, m, writeError)
}

// prepareWith is prepare writing its error reply with errw (the route's error shape).
func (s *Server) prepareWith(w http.ResponseWriter, r *http.Request, m Model, errw func(http.ResponseWriter, int, string)) (time.Duration, bool) {
	ctx := r.Context()
	load, err := s.ensureLoaded(ctx, m.Name)
	if err != nil {
		return 0, false
	}
	if s.cfg.BeforeChat != nil {
		if err := s.cfg.BeforeChat(ctx, m.Name); err != nil {
			if ctx.Err() == nil {
				errw(w, http.StatusInternalServerError, err.Error())
			}
			return 0, false
		}
	}
	if err := s.waitHolds(ctx, m.Name); err != nil {
		return 0, false
	}
	return load, true
}

// generate produces the reply tokens, one each TokenDelay (pacer), and calls emit per
// token. It stops early if the client leaves.
func (s *Server) generate(ctx context.Context, toks []string, emit func(tok string) error) error {
	p := pacer{every: s.cfg.TokenDelay, due: time.Now()}
	for i, t := range toks {
		if err := sleepCtx(ctx, p.wait(time.Now())); err != nil {
			return err
		}
		if s.cfg.BeforeToken != nil {
			if err := s.cfg.BeforeToken(ctx, i); err != nil {
				return err
			}
		}
		if emit != nil {
			if err := emit(t); err != nil {
				return err
			}
		}
	}
	return nil
}

// pacer times the tokens of a reply on a clock of their own, as a GPU makes them while
// Ollama's server writes the ones before to the client (the runner that generates them
// is another process, its tokens reach the server's handler over a stream of their own):
// the time a token takes to be written does not delay the next one, as it would if each
// token slept its delay after the write before it. A reply held back by more than a
// token's time (a BeforeToken hook, a client reading slowly) is paced on from then,
// without a burst of the tokens it missed.
type pacer struct {
	every time.Duration // the time between tokens
	due   time.Time     // when the last token was due
}

// wait is how long the next token waits at now.
func (p *pacer) wait(now time.Time) time.Duration {
	p.due = p.due.Add(p.every)
	if now.Sub(p.due) > p.every {
		p.due = now
	}
	return max(p.due.Sub(now), 0)
}

func metrics(load time.Duration, promptTokens, evalTokens int) ollama.Metrics {
	eval := time.Duration(evalTokens) * tokenCost
	pe := time.Duration(promptTokens) * tokenCost / 10
	return ollama.Metrics{
		TotalDuration:      load + pe + eval,
		LoadDuration:       load,
		PromptEvalCount:    promptTokens,
		PromptEvalDuration: pe,
		EvalCount:          evalTokens,
		EvalDuration:       eval,
	}
}

// topLogprobsInRange refuses a top_logprobs outside 0..20 as Ollama's chat and generate
// handlers do, first of all (v0.17.4 server/routes.go), before the model is read; errw
// writes the refusal in the route's shape.
func topLogprobsInRange(w http.ResponseWriter, n int, errw func(http.ResponseWriter, int, string)) bool {
	if n < 0 || n > 20 {
		errw(w, http.StatusBadRequest, "top_logprobs must be between 0 and 20")
		return false
	}
	return true
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req ollama.ChatRequest
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !topLogprobsInRange(w, req.TopLogprobs, writeError) {
		return
	}
	unload := len(req.Messages) == 0 && isZeroKeepAlive(req.KeepAlive)
	m, ok := s.modelOf(w, req.Model, "chat", !unload)
	if !ok {
		return
	}
	if !unload && !capable(w, m, req.Model, req.Think, false, "tools", holdsTools(req.Tools) && !m.Tools, writeError) {
		return
	}
	defer s.enter(false)()
	defer s.expireAfter(m.Name, req.KeepAlive)
	now := s.cfg.Clock().UTC()
	if len(req.Messages) == 0 {
		s.loadOnly(w, r, m, req.KeepAlive, func(reason string) any {
			return ollama.ChatResponse{Model: req.Model, CreatedAt: now, Message: ollama.Message{Role: "assistant"}, Done: true, DoneReason: reason}
		})
		return
	}
	load, ok := s.prepare(w, r, m)
	if !ok {
		return
	}
	var prompt strings.Builder
	for _, msg := range req.Messages {
		prompt.WriteString(msg.Role + ": " + msg.Content + "\n")
	}
	toks := Reply(m.Name, prompt.String(), s.capTokens(numPredict(req.Options, s.cfg.Tokens)))
	final := ollama.ChatResponse{
		Model: req.Model, CreatedAt: now, Done: true, DoneReason: "stop",
		Message: ollama.Message{Role: "assistant"},
		Metrics: metrics(load, len(strings.Fields(prompt.String())), len(toks)),
	}
	if req.Stream != nil && !*req.Stream {
		if s.generate(r.Context(), toks, nil) != nil || nonStreamedFailure(w, f) {
			return
		}
		if f != nil && f.kind == kindNoDone {
			// Ollama answers the last line it got, with the texts joined.
			final = ollama.ChatResponse{Model: req.Model, CreatedAt: now, Message: ollama.Message{Role: "assistant"}}
		}
		final.Message.Content = join(toks)
		final.Logprobs = logprobs(req.Logprobs, toks...)
		writeJSON(w, http.StatusOK, final, f)
		return
	}
	sw := newStreamWriter(w, f, false)
	err := s.generate(r.Context(), toks, func(tok string) error {
		return sw.frame(ollama.ChatResponse{Model: req.Model, CreatedAt: now, Message: ollama.Message{Role: "assistant", Content: tok}, Logprobs: logprobs(req.Logprobs, tok)})
	})
	if err == nil && !sw.noDone() {
		_ = sw.frame(final)
	}
	if err == nil {
		sw.streamErr(nativeError)
	}
}

func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req ollama.GenerateRequest
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !topLogprobsInRange(w, req.TopLogprobs, writeError) {
		return
	}
	unload := req.Prompt == "" && isZeroKeepAlive(req.KeepAlive)
	// Ollama's handler refuses raw mode with a template, system or context once the
	// model is found and neither an unload nor an image model's generate, before it
	// looks at what the model can do (v0.17.4 server/routes.go).
	rawRefused := req.Raw && (req.Template != "" || req.System != "" || len(req.Context) > 0)
	m, ok := s.modelOf(w, req.Model, "generate", !unload && !rawRefused)
	if !ok {
		return
	}
	if !unload && !m.Image && rawRefused {
		writeError(w, http.StatusBadRequest, "raw mode does not support template, system, or context")
		return
	}
	if !unload && !m.Image && !capable(w, m, req.Model, req.Think, true, "insert", req.Suffix != "", writeError) {
		return
	}
	defer s.enter(false)()
	defer s.expireAfter(m.Name, req.KeepAlive)
	now := s.cfg.Clock().UTC()
	if unload || req.Prompt == "" && len(req.Images) == 0 {
		s.loadOnly(w, r, m, req.KeepAlive, func(reason string) any {
			return ollama.GenerateResponse{Model: req.Model, CreatedAt: now, Done: true, DoneReason: reason}
		})
		return
	}
	load, ok := s.prepare(w, r, m)
	if !ok {
		return
	}
	if m.Image {
		s.generateImage(w, r, req, load, now, f)
		return
	}
	prompt := req.System + "\n" + req.Prompt + "\n" + req.Suffix
	toks := Reply(m.Name, prompt, s.capTokens(numPredict(req.Options, s.cfg.Tokens)))
	final := ollama.GenerateResponse{
		Model: req.Model, CreatedAt: now, Done: true, DoneReason: "stop",
		Context: []int{1, 2, 3},
		Metrics: metrics(load, len(strings.Fields(prompt)), len(toks)),
	}
	if req.Stream != nil && !*req.Stream {
		if s.generate(r.Context(), toks, nil) != nil || nonStreamedFailure(w, f) {
			return
		}
		if f != nil && f.kind == kindNoDone {
			final = ollama.GenerateResponse{Model: req.Model, CreatedAt: now}
		}
		final.Response = join(toks)
		final.Logprobs = logprobs(req.Logprobs, toks...)
		writeJSON(w, http.StatusOK, final, f)
		return
	}
	sw := newStreamWriter(w, f, false)
	err := s.generate(r.Context(), toks, func(tok string) error {
		return sw.frame(ollama.GenerateResponse{Model: req.Model, CreatedAt: now, Response: tok, Logprobs: logprobs(req.Logprobs, tok)})
	})
	if err == nil && !sw.noDone() {
		_ = sw.frame(final)
	}
	if err == nil {
		sw.streamErr(nativeError)
	}
}

// nonStreamedFailure answers a non-streamed chat or generate whose stream would have
// ended with StreamError as Ollama does, with the error and status 500, and reports
// whether it did.
func nonStreamedFailure(w http.ResponseWriter, f *Failure) bool {
	if f == nil || f.kind != kindStreamErr {
		return false
	}
	writeError(w, http.StatusInternalServerError, f.msg)
	return true
}

// loadOnly answers an empty chat/generate, which Ollama treats as "load the
// model" (or "unload" with keep_alive 0), with one JSON object.
func (s *Server) loadOnly(w http.ResponseWriter, r *http.Request, m Model, keepAlive json.RawMessage, resp func(reason string) any) {
	if isZeroKeepAlive(keepAlive) {
		s.mu.Lock()
		if s.loaded == m.Name {
			s.loaded = ""
			s.notifyLocked()
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, resp("unload"), nil)
		return
	}
	if _, err := s.ensureLoaded(r.Context(), m.Name); err != nil {
		return
	}
	writeJSON(w, http.StatusOK, resp("load"), nil)
}

// expireAfter unloads model once a request that carried keepAlive 0 ends, as Ollama's
// scheduler expires a runner whose session duration is 0 when its last request ends.
func (s *Server) expireAfter(model string, keepAlive json.RawMessage) {
	if !isZeroKeepAlive(keepAlive) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded == model {
		s.loaded = ""
		s.notifyLocked()
	}
}

// embedInputs decodes Ollama's embed input: a string or an array of strings.
func embedInputs(raw json.RawMessage) ([]string, bool) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, true
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil {
		return many, true
	}
	return nil, false
}

func (s *Server) handleEmbed(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req ollama.EmbedRequest
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m, ok := s.modelFor(w, req.Model, embedding)
	if !ok {
		return
	}
	defer s.enter(true)()
	inputs, ok := embedInputs(req.Input)
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid input type")
		return
	}
	resp := ollama.EmbedResponse{Model: req.Model, Embeddings: [][]float32{}, PromptEvalCount: len(inputs)}
	for _, in := range inputs {
		v := Vector(m.Name, in)
		f32 := make([]float32, len(v))
		for i, x := range v {
			f32[i] = float32(x)
		}
		resp.Embeddings = append(resp.Embeddings, f32)
	}
	writeJSON(w, http.StatusOK, resp, f)
}

func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request, body []byte, f *Failure) {
	var req ollama.EmbeddingRequest
	if err := decodeBody(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m, ok := s.modelFor(w, req.Model, embedding)
	if !ok {
		return
	}
	defer s.enter(true)()
	writeJSON(w, http.StatusOK, ollama.EmbeddingResponse{Embedding: Vector(m.Name, req.Prompt)}, f)
}

// capable refuses, as Ollama's chat and generate handlers do before they schedule a
// runner (v0.17.4 server/routes.go), a call that asks model m for a capability the fake's
// models lack: thinking (think true, "high", "medium" or "low") on a model without
// Thinking, then tools (chat) on a model without Tools, or insert (a suffix, generate),
// which no fake model has; wantsOther is a call that asks for other and the model lacks it.
// On generate a think string is refused first whatever the model (none of the fake's
// has Ollama's harmony parser). asked is the name as the request gave it. It reports
// whether the call may go on; errw writes a refusal in the route's shape.
func capable(w http.ResponseWriter, m Model, asked string, think json.RawMessage, generate bool, other string, wantsOther bool,
	errw func(http.ResponseWriter, int, string)) bool {
	v := string(bytes.TrimSpace(think))
	var s string // a think string, as the decoder reads it ("\u006cow" is "low")
	effort := strings.HasPrefix(v, `"`) && json.Unmarshal(think, &s) == nil && (s == "high" || s == "medium" || s == "low")
	if generate && effort {
		errw(w, http.StatusBadRequest, fmt.Sprintf("think value %q is not supported for this model", s))
		return false
	}
	if (v == "true" || effort) && !m.Thinking {
		errw(w, http.StatusBadRequest, fmt.Sprintf("%q does not support thinking", asked))
		return false
	}
	if wantsOther {
		// scheduleRunner's error names the model in full.
		full := m.Name
		switch strings.Count(full, "/") {
		case 0:
			full = "registry.ollama.ai/library/" + full
		case 1:
			full = "registry.ollama.ai/" + full
		}
		errw(w, http.StatusBadRequest, full+" does not support "+other)
		return false
	}
	return true
}

// holdsTools reports whether a "tools" member holds a tool, as Ollama's handlers count
// them (len(req.Tools) > 0).
func holdsTools(tools json.RawMessage) bool {
	t := bytes.TrimSpace(tools)
	return len(bytes.Trim(t, "[] \t\r\n")) > 0 && string(t) != "null"
}
