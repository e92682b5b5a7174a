package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/klauspost/compress/zstd"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// HeaderJobID names the job behind a queued response, so a client can look it up under
// /jobs/{id} (its result stays there after the connection is gone).
const HeaderJobID = "X-Foreman-Job-Id"

// HeaderEarlyJobID, on a chat or generate request, asks for the job's id as soon as the
// job is queued: a 103 Early Hints response carrying X-Foreman-Job-Id comes before the
// answer, so the client can show the job's place in the queue while it waits. Only
// clients that ask get it (some HTTP clients take any 1xx for the answer).
const HeaderEarlyJobID = "X-Foreman-Early-Job-Id"

// wantsEarlyJobID reports whether a request asks for the early job id: the header is "1"
// or "true" (any case); "0", "false" or anything else ask for nothing.
func wantsEarlyJobID(h http.Header) bool {
	v := strings.TrimSpace(h.Get(HeaderEarlyJobID))
	return v == "1" || strings.EqualFold(v, "true")
}

// submitTimeout bounds writing a job to the store. The write is detached from the
// client's context: a client leaving mid-submit must not leave a half-known job behind;
// the sync response notices the departure right after and cancels the job instead.
const submitTimeout = 10 * time.Second

// queuedRoutes registers the routes that run as jobs through the queue: every call
// becomes a durable sync job, and its answer is written from the worker's stream.
func (s *Server) queuedRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/chat", s.handleQueued(broker.KindChat))
	mux.HandleFunc("POST /api/generate", s.handleQueued(broker.KindGenerate))
	mux.HandleFunc("POST /v1/chat/completions", s.handleQueued(broker.KindOpenAIChat))
	mux.HandleFunc("POST /v1/completions", s.handleQueued(broker.KindOpenAICompletion))
	mux.HandleFunc("POST /v1/responses", s.handleQueued(broker.KindOpenAIResponses))
	mux.HandleFunc("POST /v1/messages", s.handleQueued(broker.KindAnthropicMessages))
	mux.HandleFunc("POST /v1/images/generations", s.handleQueued(broker.KindOpenAIImages))
	mux.HandleFunc("POST /v1/images/edits", s.handleQueued(broker.KindOpenAIImageEdits))
}

// inference is a queued route's request as the gateway reads it, from one decode of the
// body: the model, whether the client wants a stream, and the load options that pick the
// job's queue.
type inference struct {
	model  string
	stream bool
	opts   string // the load-options token (broker.LoadOptions.Token)
	// format is the "format" member as sent; completes says the call asks for a
	// completion (messages or a prompt), not only a load (refuseBadFormat).
	format    json.RawMessage
	completes bool
	// refused is the 400 for options of a type Ollama refuses, answered once the model is
	// known to be there.
	refused error
	// asks is what the call asks of the model's capabilities, on the routes whose body
	// Ollama's handler reads as it comes (refusedWithoutLoad).
	asks capabilityAsks
	// body is the body as Ollama reads it (decodeObject), set once the body decoded,
	// whatever the refusal after.
	body []byte
}

// inferenceRequest is a queued route's body as parseInference decodes it: each member
// only as far as a check reads it. The members of Ollama's request types (native, OpenAI
// and Anthropic) are read as far as their JSON kind, which their decoders check
// (nativeTypeRefusal, compatTypeRefusal). An alias of an unnamed struct: a decoder's
// refusal of it would name no type.
type inferenceRequest = struct {
	Model   stringMember       `json:"model"`
	Stream  streamField        `json:"stream"`
	Options broker.LoadOptions `json:"options"`
	Format  json.RawMessage    `json:"format"`
	// ResponseFormat is /v1/chat/completions' (other routes ignore it).
	ResponseFormat rawKinded[objectKind] `json:"response_format"`
	Messages       listMember            `json:"messages"`
	Prompt         typed[stringKind]     `json:"prompt"`
	// Text, Input and Instructions are /v1/responses' (Input also /v1/embeddings').
	Text         rawKinded[objectKind] `json:"text"`
	Input        inputMember           `json:"input"`
	Instructions typed[stringKind]     `json:"instructions"`
	// TopLogprobs is the native and OpenAI chat routes' int, Logprobs the native routes'
	// and /v1/chat/completions' bool and /v1/completions' *int (kept raw: a null drops
	// it, as it drops Ollama's pointer).
	TopLogprobs intMember      `json:"top_logprobs"`
	Logprobs    logprobsMember `json:"logprobs"`
	// MaxTokens is /v1/messages' int and the OpenAI routes' *int.
	MaxTokens intMember `json:"max_tokens"`
	// Think, Tools, Suffix and KeepAlive are the native routes' (Tools also the OpenAI
	// and Anthropic routes', Suffix /v1/completions'), Reasoning and ReasoningEffort
	// /v1/chat/completions': what refusedWithoutLoad reads.
	Think           thinkMember           `json:"think"`
	Tools           typed[arrayKind]      `json:"tools"`
	Suffix          typed[stringKind]     `json:"suffix"`
	KeepAlive       keepAliveMember       `json:"keep_alive"`
	Reasoning       rawKinded[objectKind] `json:"reasoning"`
	ReasoningEffort rawKinded[stringKind] `json:"reasoning_effort"`
	// The other members of Ollama's native request types whose JSON kind its decoder
	// checks (nativeTypeRefusal); none is read beyond that.
	System          typed[stringKind] `json:"system"`
	Template        typed[stringKind] `json:"template"`
	Context         typed[arrayKind]  `json:"context"`
	Raw             typed[boolKind]   `json:"raw"`
	Images          typed[arrayKind]  `json:"images"`
	Truncate        typed[boolKind]   `json:"truncate"`
	Shift           typed[boolKind]   `json:"shift"`
	DebugRenderOnly typed[boolKind]   `json:"_debug_render_only"`
	Width           int32Member       `json:"width"`
	Height          int32Member       `json:"height"`
	Steps           int32Member       `json:"steps"`
	// The other members of the OpenAI and Anthropic layers' request types whose JSON
	// kind their decoders check (compatTypeRefusal); none is read beyond that.
	StreamOptions    kinded[objectKind] `json:"stream_options"`
	Seed             int64Member        `json:"seed"`
	Temperature      floatMember        `json:"temperature"`
	TopP             floatMember        `json:"top_p"`
	FrequencyPenalty floatMember        `json:"frequency_penalty"`
	PresencePenalty  floatMember        `json:"presence_penalty"`
	Background       kinded[boolKind]   `json:"background"`
	Include          kinded[arrayKind]  `json:"include"`
	MaxOutputTokens  int64Member        `json:"max_output_tokens"`
	Truncation       kinded[stringKind] `json:"truncation"`
	TopK             int64Member        `json:"top_k"`
	StopSequences    kinded[arrayKind]  `json:"stop_sequences"`
	ToolChoice       kinded[objectKind] `json:"tool_choice"`
	Thinking         kinded[objectKind] `json:"thinking"`
	Metadata         kinded[objectKind] `json:"metadata"`
}

// parseInference reads a queued route's body in one decode. Ollama's /api routes stream
// unless told otherwise, the OpenAI routes only on "stream": true. The model is the
// "model" member alone: on these routes the target reads no other (the legacy "name" is
// for /api/show and /api/delete), so a job queued under a "name" would reach the target
// without a model.
func parseInference(kind broker.Kind, body []byte) (inference, error) {
	var req inferenceRequest
	read, err := decodeObject(body, &req, "")
	if err != nil {
		return inference{}, err
	}
	// The OpenAI and Anthropic layers' decoders refuse a member of another kind than its
	// field's first of all, before the layer's own checks (ADR-0142).
	if err := compatTypeRefusal(kind, &req); err != nil {
		return inference{body: read}, err
	}
	// The native routes' members of a type Ollama's decoder refuses, in its words and,
	// as far as it can be told, its order (ADR-0141): a think or keep_alive its own
	// decoder refuses ends the decode, so it comes first.
	if err := decodeAborted(kind, &req); err != nil {
		return inference{body: read}, err
	}
	if err := nativeTypeRefusal(kind, &req); err != nil {
		return inference{body: read}, err
	}
	if err := optionsNotAnObject(kind, req.Options); err != nil {
		// The embedding kinds' (requestModel refused it first on their routes).
		return inference{body: read}, err
	}
	if kind == broker.KindOpenAIChat && req.Messages.none() {
		// Ollama's OpenAI layer checks for messages itself, before its handler reads the
		// model (v0.17.4 ChatMiddleware); a body of null has none either.
		return inference{body: read}, badRequest("[] is too short - 'messages'")
	}
	if err := checkTopLogprobs(kind, req.TopLogprobs, req.Logprobs.raw); err != nil {
		return inference{body: read}, err
	}
	if kind == broker.KindAnthropicMessages {
		// Ollama's Anthropic layer checks for a model, a positive max_tokens and messages
		// itself, in that order, before its handler (v0.17.4 AnthropicMessagesMiddleware).
		switch {
		case req.Model.s == "":
			return inference{body: read}, badRequest("model is required")
		case !req.MaxTokens.bad && req.MaxTokens.n <= 0:
			// Absent or null is 0; a value of another type was refused above.
			return inference{body: read}, badRequest("max_tokens is required and must be positive")
		case req.Messages.none():
			return inference{body: read}, badRequest("messages is required")
		}
	}
	if strings.TrimSpace(req.Model.s) == "" {
		if onGenerate(kind) {
			// Ollama's generate handler takes a blank name for one it cannot parse: 404.
			return inference{body: read}, &ModelNotFoundError{Model: req.Model.s}
		}
		return inference{body: read}, handlerRefusal("model is required")
	}
	if err := checkModelName(req.Model.s); err != nil {
		return inference{body: read}, err
	}
	if !ollama.ValidModelName(req.Model.s) && !onGenerate(kind) {
		// Ollama's chat handler answers a name it cannot parse so; its generate handler
		// says not found, as the model check below does.
		return inference{body: read}, handlerRefusal("model is required")
	}
	in := inference{model: req.Model.s, stream: ollama.Streams(kind.Path(), req.Stream.For(kind.Path())), opts: req.Options.Token(),
		format: req.Format, completes: kind == broker.KindChat && req.Messages.holds() || kind == broker.KindGenerate && bool(req.Prompt.holds),
		body: read}
	switch kind {
	case broker.KindOpenAIChat:
		in.format, in.completes = openAIChatFormat(req.ResponseFormat.raw), req.Messages.holds()
	case broker.KindOpenAIResponses:
		in.format, in.completes = openAIResponsesFormat(req.Text.raw), bool(req.Input.holds) || bool(req.Instructions.holds)
	}
	// Nothing to complete is no prompt on generate, which has no messages, and no
	// messages on the chat routes, which have no prompt: a member the handler's request
	// does not have completes nothing.
	nothing := !req.Messages.holds()
	if kind == broker.KindGenerate {
		nothing = !bool(req.Prompt.holds)
	}
	in.asks = capabilityAsks{tools: bool(req.Tools.holds), suffix: bool(req.Suffix.holds),
		unload: len(req.KeepAlive.raw) > 0 && string(req.KeepAlive.raw) != "null" && nothing}
	if kind == broker.KindGenerate && bool(req.Raw.holds) && bool(req.Template.holds || req.System.holds || req.Context.holds) {
		// Decoded again only for a body that names raw with one of the others. Ollama's
		// unload (no prompt, a keep_alive of 0) is answered before raw mode is read.
		in.asks.raw = rawConflict(read) && !(nothing && ollama.ZeroKeepAlive(req.KeepAlive.raw))
	}
	if kind == broker.KindOpenAIChat {
		in.asks.thinks = reasoningThinks(req.Reasoning.raw, req.ReasoningEffort.raw)
	} else {
		in.asks.thinks = thinkThinks(req.Think.raw)
	}
	if !kind.ReadsOptions() {
		in.opts = broker.DefaultLoadOptions // the target ignores them
	} else if err := req.Options.Refused(); err != nil {
		// Ollama's 500, and a job that could only fail; after the model's 404, as Ollama
		// looks the model up first (refuseAfterModel).
		in.refused = badRequest(err.Error())
	}
	return in, nil
}

// streamField is a queued route's "stream" member. A value that is no boolean is the
// decoder's 400 on the routes whose Ollama request has a "stream" (the chat and
// completion routes: nativeTypeRefusal, compatTypeRefusal); Ollama's embedding and image
// requests have none, and ignore it.
type streamField struct {
	ollama.StreamMember
	err *json.UnmarshalTypeError // the first value that was no boolean
}

// refused is the kind of the first value that was no boolean, "" for none.
func (f *streamField) refused() string {
	if f.err == nil {
		return ""
	}
	return f.err.Value
}

func (f *streamField) UnmarshalJSON(b []byte) error {
	var te *json.UnmarshalTypeError
	if err := f.StreamMember.UnmarshalJSON(b); errors.As(err, &te) && f.err == nil {
		f.err = te
	}
	return nil
}

// optionsNotAnObject is the 400 of Ollama's decoder for an "options" member that is no
// JSON object (nor null) on kind's route, in its words, nil for none: its native
// handlers decode the body first of all, their request type's options a map. The OpenAI
// and Anthropic routes have no such member. Queued, such a call waited its turn to be
// refused; a POST /jobs job was accepted to fail.
func optionsNotAnObject(kind broker.Kind, opts broker.LoadOptions) error {
	typ, named := ollamaRequestTypes[kind]
	if v := opts.NotAnObject(); v != "" && named && kind.ReadsOptions() {
		return badRequest(fmt.Sprintf("json: cannot unmarshal %s into Go struct field %s.options of type map[string]interface {}", v, typ))
	}
	return nil
}

// ollamaRequestTypes name the request types of Ollama's native handlers (v0.17.4 api),
// as its decoder's refusals name them.
var ollamaRequestTypes = map[broker.Kind]string{
	broker.KindChat: "ChatRequest", broker.KindGenerate: "GenerateRequest",
	broker.KindEmbed: "EmbedRequest", broker.KindEmbeddings: "EmbeddingRequest",
}

// checkTopLogprobs refuses a top_logprobs outside 0..20 as Ollama's chat and generate
// handlers do, first of all (v0.17.4 server/routes.go), before the model's checks: on
// the native routes and /v1/chat/completions its top_logprobs, on /v1/completions its
// logprobs when positive (the top_logprobs its OpenAI layer passes on). The other routes
// pass none on.
func checkTopLogprobs(kind broker.Kind, topLogprobs intMember, logprobs json.RawMessage) error {
	var n int
	switch kind {
	case broker.KindChat, broker.KindGenerate, broker.KindOpenAIChat:
		if topLogprobs.bad {
			return nil
		}
		n = topLogprobs.n
	case broker.KindOpenAICompletion:
		if len(logprobs) == 0 || json.Unmarshal(logprobs, &n) != nil || n <= 0 {
			return nil
		}
	default:
		return nil
	}
	if n < 0 || n > 20 {
		return handlerRefusal("top_logprobs must be between 0 and 20")
	}
	return nil
}

// intMember is an int member of a body as Ollama's encoding/json reads it into an int
// field: a null leaves the value before it as it was (`"max_tokens":3,"max_tokens":null`
// is 3), absent is 0. bad says a value was no int. refused is the first value the decoder
// refuses, as it names it (intRefused): foreman's 400 before n is read
// (nativeTypeRefusal, compatTypeRefusal).
type intMember struct {
	n       int
	bad     bool
	refused string
}

func (m *intMember) UnmarshalJSON(b []byte) error {
	if jsonKind(b) == "null" {
		return nil
	}
	n, ok := intTaken(b, 64)
	if ok {
		m.n = int(n)
		return nil
	}
	m.bad = true
	if m.refused == "" {
		m.refused = intRefused(b, 64)
	}
	return nil
}

// onGenerate reports whether Ollama runs kind's route on its generate handler: the
// legacy completions and the image routes do.
func onGenerate(kind broker.Kind) bool {
	switch kind {
	case broker.KindGenerate, broker.KindOpenAICompletion, broker.KindOpenAIImages, broker.KindOpenAIImageEdits:
		return true
	}
	return false
}

// checkModelName refuses a model name with white space around it or a control character
// in it. Ollama refuses such a name ("model is required": a name's parts are letters,
// digits and "_-.:/"), so a job queued under it could only fail; and a name is shown
// wherever its job is (the CLI's tables, the status page), where a carriage return or an
// escape sequence would rewrite the screen.
func checkModelName(model string) error {
	bad := strings.TrimSpace(model) != model || strings.IndexFunc(model, unicode.IsControl) >= 0
	if bad {
		return handlerRefusal(fmt.Sprintf("invalid model name %q: no white space around it, no control characters in it", clipInput(model)))
	}
	return nil
}

// Stages of a sync job's response that Server.trace is told of (with the worker's
// Stage* constants they make the hot path's per-stage trace, ADR-0032).
const (
	traceIn        = "in"         // the request reached its handler
	traceSubmitted = "submitted"  // the job's record and queue message are stored
	traceRelayed   = "relayed"    // the first frame reached the response
	traceFinalSeen = "final-seen" // the final marker reached the response
	traceWritten   = "written"    // the response is written
)

// traced tells Server.trace that job id reached stage at at.
func (s *Server) traced(id, stage string, at time.Time) {
	if fn := s.trace; fn != nil {
		fn(id, stage, at)
	}
}

// handleQueued turns one inference call into a sync job and writes its answer.
func (s *Server) handleQueued(kind broker.Kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		in := time.Now()
		body, hold, err := s.readBody(w, r)
		defer hold.release()
		if err == nil && kind == broker.KindOpenAIResponses {
			body, err = s.decodeZstd(r, body, hold)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		s.serveQueued(w, r, kind, body, hold, in)
	}
}

// serveQueued runs the call body (read by then, holding hold) as a sync job of kind and
// writes its answer; in is when the request reached its handler.
func (s *Server) serveQueued(w http.ResponseWriter, r *http.Request, kind broker.Kind, body []byte, hold *bodyHold, in time.Time) {
	inf, err := parseQueued(kind, body)
	if inf.body != nil {
		body = inf.body // what Ollama reads of it, the only part queued and sent on
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if inf.stream {
		streamHeaders(w.Header(), kind) // the body passed Ollama's middleware checks
	}
	who, err := callerOf(r.Context(), r.Header, "", "", s.cfg.SyncPriority)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	model, err := s.queueableModel(r.Context(), kind, inf.model)
	if err == nil {
		err = s.refuseNoImages(r.Context(), kind, model)
	}
	if err == nil {
		err = inf.refused
	}
	if err == nil && s.refusedWithoutLoad(r.Context(), kind, model, inf.asks) {
		s.relayNoCompletion(w, r, kind, model, s.bodyFor(body, inf.model, model), hold)
		return
	}
	if err == nil {
		err = s.refuseBadFormat(r.Context(), kind, model, inf)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.refuseInOutage(r.Context(), model); err != nil {
		s.writeError(w, r, err)
		return
	}
	job := &broker.Job{ID: s.store.NewID(), Kind: kind, Model: model, Sync: true, Gateway: s.store.BootID(),
		FeedPing: true, // runSync opens the job's feed before it submits the job (ADR-0072)
		Priority: who.priority, Program: who.program, LoadOptions: inf.opts}
	body = s.bodyFor(body, inf.model, model)
	s.traced(job.ID, traceIn, in)
	s.runSync(w, r, job, inf.stream, body, hold)
	s.traced(job.ID, traceWritten, time.Now())
}

// parseQueued reads the body of a job of kind (parseInference) with every refusal its
// route makes before the model is looked up: POST /jobs makes them too (parseSubmission),
// so that a job the target could only refuse is refused at submit, in the sync route's
// words. The image routes' own checks come first, as Ollama's OpenAI layer makes them
// before its handler looks at the model. The embedding routes' checks of their own
// (requestModel) come before this on those routes.
func parseQueued(kind broker.Kind, body []byte) (inference, error) {
	inf, err := parseInference(kind, body)
	if inf.body != nil {
		body = inf.body
	}
	if ierr := checkImageRequest(kind, body); ierr != nil {
		err = ierr
	}
	return inf, err
}

// queueableModel decides whether a job of kind naming model may be queued, and returns
// the model it runs: model itself, or, on the routes where Ollama reads its aliases
// (chat and generate, and the routes on top of them), the model an alias of the target's
// names (ollama.ResolveAlias, ADR-0068). The job is queued under that model, so it takes
// its turn with the model's other jobs, and its body goes to the target as bodyFor makes
// it, for Ollama to resolve the same alias. The aliases are the target's at the last poll; a
// name found neither among the models nor the aliases is looked for once more after the
// poll requireModel makes, which catches an alias made since.
func (s *Server) queueableModel(ctx context.Context, kind broker.Kind, model string) (string, error) {
	if !readsAliases(kind) {
		return model, s.queueable(ctx, model, model)
	}
	target, aliased := s.inv.ResolveAlias(model)
	if !aliased {
		err := s.queueable(ctx, model, model)
		if !errors.Is(err, ErrModelNotFound) {
			return model, err
		}
		if target, aliased = s.inv.ResolveAlias(model); !aliased {
			return model, err
		}
	}
	if err := s.queueable(ctx, target, model); err != nil {
		if errors.Is(err, ErrModelNotFound) {
			// Ollama names the model the call asked for.
			return "", &ModelNotFoundError{Model: model}
		}
		return "", err
	}
	return target, nil
}

// bodyFor is the body a job goes to the target with, for a call that named asked and is
// queued under model. On one foreman that is the body as it came: its Mac resolves the
// alias itself. On a shared NATS the job may run on another Mac that has the model but
// not the alias, which would answer 404: there the body names the model too, as its last
// "model" member, the one Ollama reads (ADR-0068), and the answer names the model.
func (s *Server) bodyFor(body []byte, asked, model string) []byte {
	if asked == model || !s.cfg.OwnModelsOnly {
		return body
	}
	end := bytes.LastIndexByte(body, '}')
	if end < 0 {
		return body // not reached: the body decoded as an object naming asked
	}
	name, _ := json.Marshal(model)
	out := make([]byte, 0, len(body)+len(name)+len(`,"model":`))
	out = append(out, body[:end]...)
	out = append(out, `,"model":`...)
	out = append(out, name...)
	return append(out, body[end:]...)
}

// readsAliases reports whether Ollama resolves a model alias on kind's route: its chat
// and generate handlers do (v0.17.4), and so every route on top of them; its embedding
// handlers do not.
func readsAliases(kind broker.Kind) bool {
	switch kind {
	case broker.KindEmbed, broker.KindEmbeddings, broker.KindOpenAIEmbeddings:
		return false
	}
	return true
}

// queueable decides whether a job for model may be queued. A model the target is
// known to have is queued even while the target is down: it runs when the target is
// back. Known means in the last known list, or, before the target answered a poll of this
// run, in the list remembered from the run before (ADR-0047). With the target
// unreachable and the model unknown there is nothing to wait for, so the answer is 502
// rather than a job that cannot run.
//
// With several foremen on one NATS, a model another live target lists is queued too: a
// worker whose target has it runs it (ADR-0029).
//
// asked is the name the call gave (an alias of model's, or model itself): a refusal
// names it, as Ollama's errors name the model asked for.
func (s *Server) queueable(ctx context.Context, model, asked string) error {
	var targetsErr error // the other Macs' lists could not be read
	if !s.inv.HasModel(model) {
		others, err := s.readOtherTargets(ctx)
		want := ollama.NormalizeModel(model)
		if slices.ContainsFunc(others, func(t broker.Target) bool { return t.HasModel(want) }) {
			return nil
		}
		targetsErr = err
	}
	if err := s.requireModel(ctx, model); err != nil {
		var nf *ModelNotFoundError
		if targetsErr != nil && errors.As(err, &nf) {
			// Not this Mac's; whether another Mac has it is unknown: not Ollama's 404,
			// on which a client pulls the model or takes it for gone.
			return refuse(ErrUnavailable, fmt.Sprintf("model %s is not on this foreman's Ollama, and the other Macs' "+
				"model lists cannot be read now (%v); retry shortly", modelNamed(asked, model), targetsErr))
		}
		return err
	}
	if s.inv.HasModel(model) {
		return nil
	}
	// requireModel let it through only because the target could not be polled. One that
	// answers its polls with an error status (a proxy passing only the model calls) is
	// there to run the job, or to say it lacks the model; one not there cannot. On a
	// shared NATS the worker runs only models its target lists: such a job would wait
	// for nothing.
	if snap := s.inv.Snapshot(); snap.Err != nil && !ollama.Unreachable(snap.Err) {
		if !s.cfg.OwnModelsOnly {
			return nil
		}
		return refuse(ErrBadUpstream, fmt.Sprintf("ollama answers its model list with an error (%v), and with "+
			"several foremen a job runs only on a Mac that lists its model: model %s is in no list", snap.Err, modelNamed(asked, model)))
	}
	return refuse(ErrBadUpstream, fmt.Sprintf("ollama is unreachable and model %s is not in its last known model list", modelNamed(asked, model)))
}

// modelNamed quotes the model a call asked for, and the model it names when it asked by
// an alias.
func modelNamed(asked, model string) string {
	if asked == model {
		return fmt.Sprintf("%q", clipInput(model))
	}
	return fmt.Sprintf("%q (an alias of %q)", clipInput(asked), clipInput(model))
}

// runSync submits job and writes its answer to the client until the job ends, the
// stream breaks or the client leaves. Only a client leaving cancels the job: after a
// stream gap, or a client cut off for reading too slowly, the job runs on, and its
// result stays under /jobs/{id} (X-Foreman-Job-Id). The body's bytes go back to the
// budget once the submit is decided: the store has the body then, and the answer may
// take minutes.
func (s *Server) runSync(w http.ResponseWriter, r *http.Request, job *broker.Job, stream bool, body []byte, hold *bodyHold) {
	if !s.countStream() {
		// Its body still came in as foreman began to stop: no job is made for it.
		s.writeError(w, r, refuse(ErrUnavailable, "foreman is shutting down; retry later"))
		return
	}
	defer s.streams.Done()
	s.syncs.active.Add(1)
	defer s.syncs.active.Add(-1)
	log := s.log.With("job_id", job.ID, "model", job.Model, "kind", string(job.Kind), "program", job.Program)

	// Subscribe before submitting: the worker may start the job at once, and a frame
	// published before the subscription exists would be lost.
	feed, err := s.store.Feed(job.ID, broker.FeedConfig{Buffer: s.cfg.StreamBuffer, Peak: s.syncs.notePeak})
	if err != nil {
		s.writeError(w, r, fmt.Errorf("subscribe to job %s: %w", job.ID, err))
		return
	}
	defer feed.Close()

	sctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), submitTimeout)
	_, err = s.submitCounted(sctx, job, body)
	cancel()
	hold.release()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.traced(job.ID, traceSubmitted, time.Now())
	w.Header().Set(HeaderJobID, job.ID)
	if wantsEarlyJobID(r.Header) && r.ProtoAtLeast(1, 1) { // no 1xx to HTTP/1.0 (RFC 9110, 15.2)
		w.WriteHeader(http.StatusEarlyHints) // sent at once; the answer's status comes later
	}
	rc := http.NewResponseController(w)
	sr := &syncResponse{
		s: s, w: w, r: r, rc: rc,
		job: job, stream: stream, log: log,
		checkEvery: s.syncCheckEvery(), finalGrace: finalGrace,
		check: func(ctx context.Context) (*broker.Job, error) {
			j, _, err := s.store.Get(ctx, job.ID)
			return j, err
		},
		outage: &outageWatch{s: s, job: job, wait: s.cfg.SyncOutageWait},
	}
	o := sr.run(r.Context(), feed)
	if n := feed.Resends(); n > 0 {
		// Frames of the answer were lost between NATS nodes and asked of the runner
		// again (ADR-0078): worth an operator's look, as a node or route was down.
		log.Info("answer's lost frames asked of the runner again", "asks", n, "whole", o == outcomeDone)
	}
	switch o {
	case outcomeCanceled:
		// Canceled already (syncResponse.stopping).
	case outcomeClientGone:
		s.cancelAbandoned(job, "client disconnected", log)
	case outcomeShutdown:
		// Nobody will be waiting for it after the restart.
		s.cancelAbandoned(job, s.shutdownReason(job.ID), log)
	}
}

// shutdownReason is the error of a sync job the shutdown cancels, saying whether it had
// started: one the stopping worker cut off was handed back to be canceled here, its
// attempt counted (the worker's handBack), and must not read as never run. The worker
// has stopped by now, so the record read is the one the cancel finds.
func (s *Server) shutdownReason(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if j, _, err := s.store.Get(ctx, id); err == nil && j.StartedAt != nil {
		return "foreman shut down while the job ran"
	}
	return "foreman shut down before the job ran"
}

// cancelAbandoned cancels a job whose client went away: a queued job leaves the queue,
// a running one is aborted by the worker. The client's context is over, so the cancel
// gets a fresh, short one.
func (s *Server) cancelAbandoned(job *broker.Job, reason string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	j, err := s.store.CancelSubmitted(ctx, job, reason)
	switch {
	case err == nil && j.State != broker.StateCanceled:
		// Running: the worker ends it and logs "job canceled" then, with its attempt
		// (ADR-0020); it may yet end done.
		log.Debug("job cancel requested", "reason", reason)
	case err == nil:
		log.Info("job canceled", "reason", reason)
	case errors.Is(err, broker.ErrTerminal), errors.Is(err, broker.ErrNotFound):
		// It ended on its own meanwhile.
	default:
		log.Warn("cancel abandoned job", "err", err)
	}
}

// Stopping tells the gateway that foreman begins to stop, before its worker stops. On a
// store of its own (the embedded NATS server) no other foreman's worker could run a sync
// job that has not started, and this one takes no job any more: its client is answered
// 503 at once and the job canceled, instead of waiting for the running job to finish
// and AnswerWaiting. On a shared NATS another Mac may still run it before this foreman
// has stopped, and it waits for AnswerWaiting. Safe to call twice.
func (s *Server) Stopping() {
	s.stoppingOne.Do(func() { close(s.stopping) })
}

// AnswerWaiting answers every client still waiting for its sync job: call it once the
// worker has stopped, when no waiting job will run any more. Each such client gets 503
// (or an error line if its stream had begun) and its job is canceled; a sync call that
// reaches its job after this has begun gets 503 at once, and no job. It then waits,
// until ctx ends, for those responses to finish. Safe to call twice.
func (s *Server) AnswerWaiting(ctx context.Context) error {
	s.streamsMu.Lock()
	s.streamsShut = true
	s.streamsMu.Unlock()
	s.endingOne.Do(func() { close(s.ending) })
	done := make(chan struct{})
	go func() {
		s.streams.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// countStream counts a sync response in streams, unless AnswerWaiting has begun: a count
// that rose again after its wait began (the wait may have returned, or be waking) is a
// misuse of the WaitGroup, and no wait would cover that response.
func (s *Server) countStream() bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streamsShut {
		return false
	}
	s.streams.Add(1)
	return true
}

// syncStats counts what the sync responses did for slow clients; /metrics shows them.
type syncStats struct {
	active atomic.Int64 // sync responses running now
	cutOff atomic.Int64 // clients cut off for being too slow
	peak   atomic.Int64 // most bytes one feed ever held for its client
}

func (st *syncStats) notePeak(n int64) {
	for {
		p := st.peak.Load()
		if n <= p || st.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// decodeZstd decodes a zstd-compressed body ("Content-Encoding: zstd"), as Ollama's
// Responses route does for the clients that compress theirs; the job stores and sends
// on the decoded body. The decoded body is bounded like any body (MaxBodyBytes), and its
// bytes are taken from hold as they come, as a chunked body's are: a small body may
// inflate to the limit. Once decoded, the compressed body (which the caller drops) goes
// back to the budget. Only a Content-Encoding of "zstd" exactly is decoded, as Ollama
// compares it (v0.17.4 ResponsesMiddleware): "ZSTD" leaves the body as it came.
func (s *Server) decodeZstd(r *http.Request, body []byte, hold *bodyHold) ([]byte, error) {
	if r.Header.Get("Content-Encoding") != "zstd" {
		return body, nil
	}
	dec, err := zstd.NewReader(bytes.NewReader(body), zstd.WithDecoderMaxMemory(uint64(s.cfg.MaxBodyBytes)+1), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, badRequest("failed to decompress zstd body")
	}
	defer dec.Close()
	compressed := int64(cap(body))
	// One byte past the limit tells a body over it; a limit of the largest int (no limit,
	// as FOREMAN_MAX_BODY allows) has no byte past it, and one more wrapped negative: every
	// body decoded as empty.
	read := s.cfg.MaxBodyBytes
	if read < math.MaxInt64 {
		read++
	}
	out, err := readGrowing(io.LimitReader(dec, read), s.cfg.MaxBodyBytes, 0, false, hold)
	switch {
	case errors.Is(err, errOverBudget):
		return nil, s.budgetRefusal(hold)
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		// The frame asks for more history than a body may hold, whatever its own size:
		// decoding it would take that much memory.
		return nil, refuse(ErrTooLarge, fmt.Sprintf("zstd body compressed with a window larger than the body limit "+
			"(%d bytes, FOREMAN_MAX_BODY): compress it with a smaller window (a lower level, no long-distance matching)", s.cfg.MaxBodyBytes))
	case errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, &http.MaxBytesError{Limit: s.cfg.MaxBodyBytes}
	case err != nil:
		// What the decoder says ("invalid input: magic number mismatch"), as Ollama's
		// JSON binding, which reads through the decoder, passes it on.
		return nil, badRequest(clipInput(err.Error()))
	case int64(len(out)) > s.cfg.MaxBodyBytes:
		return nil, &http.MaxBytesError{Limit: s.cfg.MaxBodyBytes}
	}
	hold.give(compressed)
	return out, nil
}
