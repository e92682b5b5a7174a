package gateway

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Fields of a POST /jobs body that are foreman's, not the target's: they are removed
// before the body is stored and sent on.
const (
	fieldKind       = "kind"
	fieldWebhookURL = "state_webhook_url"
	fieldEvents     = "webhook_events"
	fieldPriority   = "priority"
	fieldProgram    = "program"
)

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 255

// submission is a checked POST /jobs (or foreman.jobs.submit) body.
type submission struct {
	kind    broker.Kind
	model   string
	body    []byte // the target's request: foreman fields removed, the rest byte-exact
	webhook *broker.Webhook
	// priority and program are the body's "priority" and "program"; empty when absent.
	priority broker.Priority
	program  string
	// inf is the target's body as its sync route reads it (parseQueued): the load
	// options' token, what refuseBadFormat reads, a refusal of its options.
	inf inference
	// kept are the target's members of the body; reencoded says body was made of them
	// (encodeMembers), a foreman field having been removed, rather than sent as it is.
	kept      []member
	reencoded bool
}

// member is one top-level member of a JSON object, its value byte-exact.
type member struct {
	key   string
	value json.RawMessage
}

// objectMembers splits a JSON object into its members in order, every value a slice of
// raw, byte for byte as sent: a body of megabytes is not copied to be split (a
// json.Decoder would buffer it whole, and each json.RawMessage copy it again). Anything
// but exactly one JSON object is a 400.
func objectMembers(raw []byte) ([]member, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, badRequest("missing request body")
	}
	if !json.Valid(raw) {
		return nil, invalidObject(raw)
	}
	// raw is one valid JSON value: the walk below needs no checks of its own.
	i := skipSpace(raw, 0)
	if raw[i] != '{' {
		return nil, badRequest("invalid JSON body: expected an object")
	}
	var out []member
	for i = skipSpace(raw, i+1); raw[i] != '}'; {
		end := valueEnd(raw, i)
		var key string
		if err := json.Unmarshal(raw[i:end], &key); err != nil {
			return nil, badRequest("invalid JSON body: " + err.Error())
		}
		i = skipSpace(raw, skipSpace(raw, end)+1) // past the colon
		end = valueEnd(raw, i)
		out = append(out, member{key: key, value: raw[i:end:end]})
		if i = skipSpace(raw, end); raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return out, nil
}

// invalidObject says what is wrong with raw, which is not valid JSON, in the words of
// json.Decoder as it reads the object member by member.
func invalidObject(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return badRequest("invalid JSON body: expected an object")
	}
	for dec.More() {
		if _, err := dec.Token(); err != nil {
			return badRequest("invalid JSON body: " + err.Error())
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return badRequest("invalid JSON body: " + err.Error())
		}
	}
	if _, err := dec.Token(); err != nil {
		return badRequest("invalid JSON body: " + err.Error())
	}
	return badRequest("invalid JSON body: data after the object")
}

// skipSpace returns the index of the first byte of raw from i on that is not JSON white
// space (len(raw) if none).
func skipSpace(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the JSON value that starts at raw[i]; raw must be
// valid JSON (json.Valid).
func valueEnd(raw []byte, i int) int {
	switch raw[i] {
	case '"':
		for i++; raw[i] != '"'; i++ {
			if raw[i] == '\\' {
				i++ // the escaped byte, which may be a quote
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch raw[i] {
			case '"':
				i = valueEnd(raw, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	// A number, true, false or null: up to the next delimiter or white space.
	for i < len(raw) && strings.IndexByte(",]} \t\n\r", raw[i]) < 0 {
		i++
	}
	return i
}

// parseSubmission checks a job request and separates foreman's fields from the target's;
// the webhook URL is checked against policy (nil: by its form only), whose refusal is a
// policyRefusal.
func parseSubmission(raw []byte, policy *webhook.Policy) (*submission, error) {
	members, err := objectMembers(raw)
	if err != nil {
		return nil, err
	}
	sub := &submission{kind: broker.KindChat}
	var (
		kept       []member
		hookURL    string
		events     []standIn
		hasEvents  bool
		stripped   bool
		fieldsSeen = map[string]json.RawMessage{}
		// The target's "model" members. Ollama decodes into a struct, so a key matching
		// "model" in another case counts (json matches names as strings.EqualFold does),
		// each in turn.
		modelValues []json.RawMessage
	)
	for _, m := range members {
		switch m.key {
		case fieldKind:
			var k standIn
			if err := json.Unmarshal(m.value, &k); err != nil {
				return nil, badRequest(`"kind" must be a string`)
			}
			sub.kind = broker.Kind(k)
			stripped = true
		case fieldWebhookURL:
			if jsonKind(m.value) == "string" && len(bytes.TrimSpace(m.value)) > 6*maxWebhookURL+2 {
				// Longer than maxWebhookURL however it is escaped (an escape of six bytes
				// is one byte or more): not decoded, it may be as long as the body.
				return nil, badRequest(webhookURLTooLong)
			}
			if err := json.Unmarshal(m.value, &hookURL); err != nil {
				return nil, badRequest(`"state_webhook_url" must be a string`)
			}
			stripped = true
		case fieldEvents:
			if err := json.Unmarshal(m.value, &events); err != nil {
				return nil, badRequest(`"webhook_events" must be an array of state names`)
			}
			hasEvents, stripped = true, true
		case fieldPriority:
			if err := parsePriorityField(m.value, &sub.priority); err != nil {
				return nil, err
			}
			stripped = true
		case fieldProgram:
			if err := parseProgramField(m.value, &sub.program); err != nil {
				return nil, err
			}
			stripped = true
		default:
			kept = append(kept, m)
			fieldsSeen[m.key] = m.value
			if strings.EqualFold(m.key, "model") {
				modelValues = append(modelValues, m.value)
			}
		}
	}
	if !sub.kind.Valid() {
		names := make([]string, len(broker.Kinds))
		for i, k := range broker.Kinds {
			names[i] = string(k)
		}
		return nil, badRequest(fmt.Sprintf("unknown kind %q (%s)", clipInput(string(sub.kind)), strings.Join(names, ", ")))
	}
	if hookURL != "" {
		if err := checkWebhookURL(hookURL, policy); err != nil {
			return nil, err
		}
		sub.webhook = &broker.Webhook{URL: hookURL}
		for _, e := range events {
			st := broker.State(string(e))
			if !st.Valid() {
				return nil, badRequest(fmt.Sprintf("webhook_events: unknown state %q (queued, loading, working, retrying, done, failed, canceled)", clipInput(string(e))))
			}
			if !slices.Contains(sub.webhook.Events, st) {
				sub.webhook.Events = append(sub.webhook.Events, st)
			}
		}
	} else if hasEvents && len(events) > 0 {
		return nil, badRequest("webhook_events needs state_webhook_url")
	}
	sub.body, sub.kept, sub.reencoded = raw, kept, stripped
	if stripped {
		sub.body = encodeMembers(kept)
	}
	// What the sync route of the kind refuses before it queues, refused before the job
	// waits its turn, in that route's words and order (a body with two faults gets the
	// sync route's refusal): the body is the one the target gets.
	if embeds(sub.kind) {
		if _, _, _, err := requestModel(sub.kind.Path(), sub.body); err != nil {
			return nil, err
		}
	}
	if sub.inf, err = parseQueued(sub.kind, sub.body); err != nil {
		return nil, err
	}
	// Then foreman's own checks, of what those checks let through and the target would
	// refuse after the job's wait, or foreman could not queue.
	// The model the target will use, decoded as Ollama decodes it: the last one wins, a
	// null leaves the one before (one of a body's size, which names no model, as
	// modelString stands it in).
	for _, v := range modelValues {
		switch jsonKind(v) {
		case "null":
		case "string":
			m, ok := modelString(v)
			if !ok {
				return nil, badRequest(`"model" must be a string`)
			}
			sub.model = m
		default:
			return nil, badRequest(`"model" must be a string`)
		}
	}
	if strings.TrimSpace(sub.model) == "" {
		return nil, badRequest("model is required")
	}
	if err := checkModelName(sub.model); err != nil {
		return nil, err
	}
	if !ollama.ValidModelName(sub.model) {
		return nil, badRequest(fmt.Sprintf("invalid model name %q: Ollama takes [host/][namespace/]model[:tag] of letters, digits and _-.", clipInput(sub.model)))
	}
	if _, err := broker.ModelToken(sub.model); err != nil {
		return nil, badRequest(err.Error())
	}
	if err := checkKindFields(sub.kind, fieldsSeen); err != nil {
		return nil, err
	}
	return sub, nil
}

// parsePriorityField reads a body's "priority": high, normal or low (null: none).
func parsePriorityField(v json.RawMessage, p *broker.Priority) error {
	if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		*p = ""
		return nil
	}
	if n, long := longString(v); long {
		return badRequest(`"priority": ` + strings.TrimPrefix(broker.PriorityTooLong(n).Error(), broker.ErrBadPriority.Error()+": "))
	}
	var str string
	if err := json.Unmarshal(v, &str); err != nil {
		return badRequest(`"priority" must be a string: high, normal or low`)
	}
	got, err := broker.ParsePriority(str)
	if err != nil {
		return badRequest(`"priority": ` + strings.TrimPrefix(err.Error(), broker.ErrBadPriority.Error()+": "))
	}
	*p = got
	return nil
}

// standIn is a string member of a submission of its own (its kind, a webhook event) as
// json.Unmarshal decodes it; one longer than maxModelString, which none of their values
// is, is not decoded whole but stood in for as modelString stands in for a model, quoted
// as the whole. A value of another kind is the decoder's error.
type standIn string

func (s *standIn) UnmarshalJSON(b []byte) error {
	if jsonKind(b) != "string" {
		return json.Unmarshal(b, (*string)(s))
	}
	v, _ := modelString(b)
	*s = standIn(v)
	return nil
}

// longString reports whether v is a JSON string longer than maxModelString (as sent),
// too long to be a priority or a program and to be decoded whole (each invalid UTF-8
// byte of it would be three bytes, and encoding/json's buffer grows by doubling), and n,
// its length decoded, which their refusals name.
func longString(v []byte) (n int, long bool) {
	if jsonKind(v) != "string" || len(bytes.TrimSpace(v)) <= maxModelString {
		return 0, false
	}
	jsonRunes(v, func(r rune) bool {
		n += utf8.RuneLen(r)
		return true
	})
	return n, true
}

// parseProgramField reads a body's "program": 1 to 64 of [A-Za-z0-9._-] (null: none).
func parseProgramField(v json.RawMessage, p *string) error {
	if bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		*p = ""
		return nil
	}
	if n, long := longString(v); long {
		return badRequest(`"program": ` + strings.TrimPrefix(broker.ProgramTooLong(n).Error(), broker.ErrBadProgram.Error()+": "))
	}
	var str string
	if err := json.Unmarshal(v, &str); err != nil {
		return badRequest(`"program" must be a string`)
	}
	if err := broker.ValidateProgram(str); err != nil {
		return badRequest(`"program": ` + strings.TrimPrefix(err.Error(), broker.ErrBadProgram.Error()+": "))
	}
	*p = str
	return nil
}

// checkKindFields rejects bodies the target would refuse anyway, before they wait in the
// queue: wrong JSON types of the fields each kind is about.
func checkKindFields(kind broker.Kind, f map[string]json.RawMessage) error {
	is := func(v json.RawMessage, first ...byte) bool {
		v = bytes.TrimSpace(v)
		if v == nil || bytes.Equal(v, []byte("null")) {
			return true
		}
		return bytes.IndexByte(first, v[0]) >= 0
	}
	switch kind {
	case broker.KindChat, broker.KindOpenAIChat, broker.KindAnthropicMessages:
		if !is(f["messages"], '[') {
			return badRequest(`"messages" must be an array`)
		}
	case broker.KindGenerate:
		if !is(f["prompt"], '"') {
			return badRequest(`"prompt" must be a string`)
		}
	case broker.KindOpenAIResponses:
		if !is(f["input"], '"', '[') {
			return badRequest(`"input" must be a string or an array of input items`)
		}
	case broker.KindEmbed, broker.KindOpenAIEmbeddings:
		if !is(f["input"], '"', '[') {
			return badRequest(`"input" must be a string or an array of strings`)
		}
	case broker.KindEmbeddings:
		if !is(f["prompt"], '"') {
			return badRequest(`"prompt" must be a string`)
		}
	case broker.KindOpenAIImages, broker.KindOpenAIImageEdits:
		if !is(f["prompt"], '"') {
			return badRequest(`"prompt" must be a string`)
		}
		// A generation's "image" Ollama does not read.
		if kind == broker.KindOpenAIImageEdits && !is(f["image"], '"') {
			return badRequest(`"image" must be a string: a base64 data URL`)
		}
	}
	return nil
}

// maxWebhookURL is the longest state_webhook_url a job takes, in bytes.
const maxWebhookURL = 2048

// webhookURLTooLong is the refusal of a state_webhook_url longer than maxWebhookURL.
var webhookURLTooLong = fmt.Sprintf("state_webhook_url: longer than %d bytes", maxWebhookURL)

// checkWebhookURL accepts absolute http(s) URLs whose literal address (or localhost-style
// name) the webhook network policy allows (any, with policy nil); names are checked again
// at every dial.
func checkWebhookURL(raw string, policy *webhook.Policy) error {
	if len(raw) > maxWebhookURL {
		// First: a URL may be as long as the body, and its parse costs many times that.
		return badRequest(webhookURLTooLong)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return badRequest(fmt.Sprintf("state_webhook_url %q: must be an absolute http or https URL", clipInput(raw)))
	}
	if p := u.Port(); p != "" {
		// Go's URL parser takes any digits as a port; the dialer refuses 0 and past
		// 65535, so every delivery of such a job would fail.
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return badRequest(fmt.Sprintf("state_webhook_url %q: port %s is not a TCP port (1 to 65535)", clipInput(raw), clipInput(p)))
		}
	}
	if u.User != nil {
		// The URL is part of the job's record, which every caller who reads jobs sees. The
		// URL is not quoted back: it holds the password.
		return badRequest("state_webhook_url: a user or password in it would show to every caller that reads the job (GET /jobs, its events); " +
			"let the receiver check foreman's signature (FOREMAN_WEBHOOK_SECRET) instead")
	}
	if h := u.Hostname(); !isASCII(h) {
		// Go's HTTP client maps such a name to ASCII before it dials ("127。0。0。1" to
		// 127.0.0.1, "ⓛocalhost" to localhost): checked here in its own spelling, it would
		// pass the address checks below that its ASCII form fails.
		return badRequest(fmt.Sprintf("state_webhook_url %q: the host name must be ASCII (an international name in its xn-- form)", clipInput(raw)))
	}
	if policy == nil {
		return nil
	}
	if err := policy.CheckURL(u); err != nil {
		return policyRefusal{badRequest(fmt.Sprintf("state_webhook_url %q: %v", clipInput(raw), err))}
	}
	return nil
}

// policyRefusal is a webhook URL the network policy refuses (a 400): a setting's word,
// which may have changed since a keyed request's first try took the URL (submitJob).
type policyRefusal struct{ error }

func (e policyRefusal) Unwrap() error { return e.error }

// isASCII reports whether s holds ASCII bytes only.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// encodeMembers writes ms as one JSON object, into a buffer made once at its size.
func encodeMembers(ms []member) []byte {
	size := 2 // the braces
	for _, m := range ms {
		// Keys are short: writeMembers marshals them again.
		key, _ := json.Marshal(m.key)
		size += len(key) + 1 + len(m.value) + 1 // key, colon, value, comma
	}
	b := bytes.NewBuffer(make([]byte, 0, size))
	writeMembers(b, ms)
	return b.Bytes()
}

// writeMembers writes ms to w as one JSON object, with no white space between members.
func writeMembers(w io.Writer, ms []member) {
	writeMembersWith(w, ms, func(v []byte) { _, _ = w.Write(v) })
}

// writeMembersWith is writeMembers with each value written by value.
func writeMembersWith(w io.Writer, ms []member, value func([]byte)) {
	_, _ = w.Write([]byte{'{'})
	for i, m := range ms {
		if i > 0 {
			_, _ = w.Write([]byte{','})
		}
		key, _ := json.Marshal(m.key)
		_, _ = w.Write(key)
		_, _ = w.Write([]byte{':'})
		value(m.value)
	}
	_, _ = w.Write([]byte{'}'})
}

// submitJob validates a job request, checks its model with the target and queues it. A
// repeated idempotency key returns the job the key first created (replayed = true), also
// when the checks would refuse the request now (ADR-0140). hdr is the HTTP request's
// header (nil over NATS); ctx carries a named token's program.
func (s *Server) submitJob(ctx context.Context, raw []byte, idemKey string, hdr http.Header) (id string, replayed bool, err error) {
	// refused is a refusal that the job the request's key already names overrides: what
	// changed since its first try (a setting, the target's models) does not turn a retry
	// away from the job that try made.
	var refused error
	sub, err := parseSubmission(raw, &s.cfg.WebhookPolicy)
	if err != nil {
		var policy policyRefusal
		if idemKey == "" || !errors.As(err, &policy) {
			return "", false, err
		}
		// The webhook URL is refused by the network policy. When that is the body's one
		// fault, the key may name a job made under a policy that took it.
		if sub, _ = parseSubmission(raw, nil); sub == nil {
			return "", false, err
		}
		refused = err
	}
	// fail answers a refusal of the request, the body's own first.
	fail := func(err error) (string, bool, error) { return "", false, cmp.Or(refused, err) }
	who, err := callerOf(ctx, hdr, sub.program, sub.priority, s.cfg.JobsPriority)
	if err != nil {
		return fail(err)
	}
	// A program the caller may not name refuses the request whatever its key names: the
	// key is the program's, and its job is no other caller's to be told.
	if err := s.namedProgramCheck(ctx, who.program); err != nil {
		return fail(err)
	}
	if len(idemKey) > maxIdempotencyKey {
		return fail(badRequest(fmt.Sprintf("Idempotency-Key: longer than %d bytes", maxIdempotencyKey)))
	}
	var model string
	if refused == nil {
		model, refused = s.checkQueueable(ctx, sub)
	}
	if refused != nil {
		// Only now is the key read: a submit the checks pass costs what it did.
		if replay, err := s.refusedReplay(ctx, idemKey, who.program, sub); err != nil || replay != "" {
			return replay, replay != "", err
		}
		return "", false, refused
	}
	job := &broker.Job{ID: s.store.NewID(), Model: model, Kind: sub.kind, Webhook: sub.webhook, Priority: who.priority, Program: who.program,
		LoadOptions: sub.inf.opts}
	legacyKey := s.legacyIdempotencyKey(idemKey)
	idemKey = scopedIdempotencyKey(who.program, idemKey)
	if idemKey != "" {
		sums := digestsOf(sub)
		until, within := submitDeadline(ctx)
		claim := broker.IdempotencyClaim{JobID: job.ID, BodySHA256: sums.body, MembersSHA256: sums.members, Until: until, Within: within,
			Boot: s.store.BootID()}
		replay, err := s.claimKey(ctx, idemKey, legacyKey, who.program, &claim, sums, s.queuedBodyOf(sub))
		if err != nil {
			return "", false, err
		}
		if replay != "" {
			return replay, true, nil
		}
		// The record names its claim, which each later write of it keeps alive.
		job.Idempotency = broker.IdempotencyRef(idemKey)
		if s.beforeSubmit != nil {
			s.beforeSubmit(job.ID)
		}
	}
	j, err := s.submitCounted(ctx, job, s.bodyFor(sub.body, sub.model, model))
	if err != nil {
		if idemKey != "" {
			if rerr := s.store.ReleaseIdempotencyKey(context.WithoutCancel(ctx), idemKey, job.ID); rerr != nil {
				s.log.Warn("release idempotency key", "job_id", job.ID, "err", rerr)
			}
		}
		return "", false, err
	}
	s.log.Info("job submitted", "job_id", j.ID, "model", j.Model, "kind", j.Kind, "webhook", j.Webhook != nil,
		"program", j.Program, "priority", string(j.Priority))
	return j.ID, false, nil
}

// checkQueueable returns the model sub's job is queued under, or what refuses sub, a
// checked body, before it is queued, read from the target and its inventory: the model
// and what it can do. Those may change between a keyed request's tries (submitJob).
func (s *Server) checkQueueable(ctx context.Context, sub *submission) (string, error) {
	m, err := s.queueableModel(ctx, sub.kind, sub.model)
	if err == nil {
		err = s.refuseNoImages(ctx, sub.kind, m)
	}
	if err == nil {
		err = sub.inf.refused
	}
	if err == nil {
		err = s.refuseNoCompletion(ctx, sub.kind, m, sub.model, sub.body)
	}
	if err == nil {
		err = s.refuseRawMode(ctx, sub.kind, m, sub.inf.asks)
	}
	if err == nil {
		err = s.refuseLacking(ctx, sub.kind, m, sub.model, sub.inf.asks, sub.body)
	}
	if err == nil {
		err = s.refuseBadFormat(ctx, sub.kind, m, sub.inf)
	}
	return m, err
}

// refusedReplay is the job idemKey (when not "") names for program's request sub, which
// the checks refused: a replay of it, or "" when the key names none and the refusal
// stands. It claims nothing (claimKey with no claim).
func (s *Server) refusedReplay(ctx context.Context, idemKey, program string, sub *submission) (string, error) {
	if idemKey == "" {
		return "", nil
	}
	replay, err := s.claimKey(ctx, scopedIdempotencyKey(program, idemKey), s.legacyIdempotencyKey(idemKey), program, nil, digestsOf(sub),
		s.queuedBodyOf(sub))
	if replay != "" {
		s.log.Info("job replayed to a keyed request the checks refuse now", "job_id", replay, "model", sub.model, "program", program)
	}
	return replay, err
}

// queuedBodyOf is the body sub's job was queued with, from the job's record: as bodyFor
// made it for the model the record says it was queued under (Job.Model). A request by an
// alias is queued under the alias's model, its body naming that model on a shared NATS
// (ADR-0068); a keyed retry of it that queues its job again (its first message lost)
// sends only the alias, and a retry the checks refuse now has not even resolved it
// (ADR-0140). Queued as sent, such a job runs on another Mac without the alias as its
// 404.
func (s *Server) queuedBodyOf(sub *submission) func(*broker.Job) []byte {
	return func(j *broker.Job) []byte { return s.bodyFor(sub.body, sub.model, j.Model) }
}

// scopedIdempotencyKey is the key a request's Idempotency-Key is claimed under: one per
// program, so that one caller's key neither replays another caller's job nor is refused
// for another's body (with named tokens a program is an authenticated caller). Program
// names never hold a newline. An empty key stays empty: no key.
func scopedIdempotencyKey(program, key string) string {
	if key == "" {
		return ""
	}
	return program + "\n" + key
}

// submitDeadline is the deadline of a submit under ctx (submitTimeout when it has none),
// and the time left until it.
func submitDeadline(ctx context.Context) (time.Time, time.Duration) {
	if dl, ok := ctx.Deadline(); ok {
		return dl.UTC(), time.Until(dl)
	}
	return time.Now().Add(submitTimeout).UTC(), submitTimeout
}
