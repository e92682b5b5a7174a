package broker

import (
	cryptorand "crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
)

// State is where a job is in its life.
type State string

// The job lifecycle: queued → loading → working → done | failed | canceled, with
// retrying between attempts. loading means the target is swapping the model in.
const (
	StateQueued   State = "queued"
	StateLoading  State = "loading"
	StateWorking  State = "working"
	StateRetrying State = "retrying"
	StateDone     State = "done"
	StateFailed   State = "failed"
	StateCanceled State = "canceled"
)

// States lists every state, in lifecycle order.
var States = []State{StateQueued, StateLoading, StateWorking, StateRetrying, StateDone, StateFailed, StateCanceled}

// Terminal reports whether a job in s will never change again.
func (s State) Terminal() bool { return s == StateDone || s == StateFailed || s == StateCanceled }

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// transitions lists the legal moves. loading and working may follow themselves because a
// job whose foreman died mid-run is redelivered and starts its next attempt from there.
var transitions = map[State][]State{
	StateQueued:   {StateLoading, StateWorking, StateRetrying, StateFailed, StateCanceled},
	StateRetrying: {StateLoading, StateWorking, StateRetrying, StateFailed, StateCanceled},
	StateLoading:  {StateLoading, StateWorking, StateRetrying, StateDone, StateFailed, StateCanceled},
	StateWorking:  {StateLoading, StateWorking, StateRetrying, StateDone, StateFailed, StateCanceled},
}

// CanTransition reports whether a job may move from one state to another. Staying in the
// same state (an update of other fields) is always allowed.
func CanTransition(from, to State) bool {
	if from == to {
		return true
	}
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// Kind is what a job asks of the target; it decides the target path.
type Kind string

const (
	KindChat             Kind = "chat"
	KindGenerate         Kind = "generate"
	KindEmbed            Kind = "embed"
	KindOpenAIChat       Kind = "openai_chat"
	KindOpenAICompletion Kind = "openai_completion"
	// KindOpenAIResponses is OpenAI's Responses API, KindAnthropicMessages Anthropic's
	// Messages API: Ollama serves both on top of its chat.
	KindOpenAIResponses   Kind = "openai_responses"
	KindAnthropicMessages Kind = "anthropic_messages"
	// KindEmbeddings is Ollama's older embedding route, KindOpenAIEmbeddings the
	// OpenAI-compatible one (ADR-0053).
	KindEmbeddings       Kind = "embeddings"
	KindOpenAIEmbeddings Kind = "openai_embeddings"
	// KindOpenAIImages and KindOpenAIImageEdits are OpenAI's image generation and edit
	// routes: Ollama runs them on its generate with an image model (ADR-0067).
	KindOpenAIImages     Kind = "openai_images"
	KindOpenAIImageEdits Kind = "openai_image_edits"
)

// Kinds lists every kind, in the order POST /jobs names them.
var Kinds = []Kind{KindChat, KindGenerate, KindEmbed, KindOpenAIChat, KindOpenAICompletion, KindOpenAIResponses, KindAnthropicMessages,
	KindEmbeddings, KindOpenAIEmbeddings, KindOpenAIImages, KindOpenAIImageEdits}

// Path is the target route that runs a job of kind k.
func (k Kind) Path() string {
	switch k {
	case KindChat:
		return "/api/chat"
	case KindGenerate:
		return "/api/generate"
	case KindEmbed:
		return "/api/embed"
	case KindEmbeddings:
		return "/api/embeddings"
	case KindOpenAIEmbeddings:
		return "/v1/embeddings"
	case KindOpenAIChat:
		return "/v1/chat/completions"
	case KindOpenAICompletion:
		return "/v1/completions"
	case KindOpenAIResponses:
		return "/v1/responses"
	case KindAnthropicMessages:
		return "/v1/messages"
	case KindOpenAIImages:
		return "/v1/images/generations"
	case KindOpenAIImageEdits:
		return "/v1/images/edits"
	}
	return ""
}

// ReadsOptions reports whether the target reads a request's "options" on k's route:
// Ollama's OpenAI and Anthropic routes (v0.17.4 openai.ChatCompletionRequest,
// CompletionRequest, ResponsesRequest, EmbedRequest, anthropic.MessagesRequest) have no
// such member and run with the default load options; nor have its image requests
// (ImageGenerationRequest, ImageEditRequest: their seed is the only option it sets).
func (k Kind) ReadsOptions() bool {
	switch k {
	case KindOpenAIChat, KindOpenAICompletion, KindOpenAIResponses, KindAnthropicMessages, KindOpenAIEmbeddings,
		KindOpenAIImages, KindOpenAIImageEdits:
		return false
	}
	return true
}

// Image reports whether k is one of OpenAI's image routes (ADR-0067): answered whole,
// one picture, whatever the request says of streams.
func (k Kind) Image() bool { return k == KindOpenAIImages || k == KindOpenAIImageEdits }

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k.Path() != "" }

// Artifact describes one stored output of a job.
type Artifact struct {
	Name        string `json:"name"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	// Inline marks the ResultArtifact of a result the record holds itself (Job.Result,
	// byte for byte): no object was written for it (ADR-0033).
	Inline bool `json:"inline,omitempty"`
}

// Webhook is where a job's state events are delivered.
type Webhook struct {
	URL string `json:"url"`
	// Events filters the states delivered; empty means all.
	Events []State `json:"events,omitempty"`
}

// Wants reports whether the webhook subscribes to state s.
func (w *Webhook) Wants(s State) bool {
	if w == nil {
		return false
	}
	if len(w.Events) == 0 {
		return true
	}
	for _, e := range w.Events {
		if e == s {
			return true
		}
	}
	return false
}

// Job is the record of one job in FOREMAN_JOBS. Its JSON is also the state event published
// on foreman.job.<id>.state, so the first six fields are the event's contract:
// {"job_id","state","model","attempt","at","error"}.
type Job struct {
	ID      string    `json:"job_id"`
	State   State     `json:"state"`
	Model   string    `json:"model"`
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error,omitempty"`

	Kind       Kind       `json:"kind"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Result is the target's final response when it is small; a large one is only in the
	// ResultArtifact. A small one is that artifact too when it is marked Inline.
	Result    json.RawMessage `json:"result,omitempty"`
	Artifacts []Artifact      `json:"artifacts,omitempty"`
	// Sync marks a job whose caller waits on an HTTP connection: it fires no webhooks.
	Sync bool `json:"sync,omitempty"`
	// Gateway is the boot id (Config.BootID) of the foreman whose gateway took a sync
	// job's call: the caller's connection lives and dies with that process.
	Gateway string `json:"gateway,omitempty"`
	// FeedPing marks a sync job whose caller's feed answers a ping on
	// foreman.job.<id>.ping: a runner on another foreman holds the answer until its NATS
	// server knows of that feed (StreamWriter.AwaitReader, ADR-0072). A record from a
	// foreman before it lacks it: its feed would take the ping for a broken stream.
	FeedPing bool     `json:"feed_ping,omitempty"`
	Webhook  *Webhook `json:"webhook,omitempty"`
	// BodyRef names the object holding a request body too large for a queue message.
	BodyRef string `json:"body_ref,omitempty"`
	// CancelRequested is the reason given to Store.Cancel for a job that was running
	// (loading or working). Only the worker writes a running job's terminal state: it
	// aborts the target call on seeing this field, ends the stream and the record canceled
	// with Error = this reason; a job that finishes first stays done (or failed) with the
	// request left here, moot. A redelivered job carrying it ends canceled without running.
	CancelRequested string `json:"cancel_requested,omitempty"`
	// QueueSeq is the queue message the current attempt runs from (its stream sequence),
	// set by the start write. Another message of a running job is a spare copy; the same
	// one coming back is the run itself, redelivered after a crash.
	QueueSeq uint64 `json:"queue_seq,omitempty"`
	// Runner is the target name (FOREMAN_TARGET_NAME) of the foreman whose worker started
	// attempt RunnerAttempt; RunnerBoot is that foreman's boot id, which its presence
	// (CallerGone's bucket) is kept under: a running record whose runner is no longer
	// present was cut short by that foreman's death (ADR-0064). The start write sets all
	// three; a foreman from before them carries them through its own start write
	// (ADR-0063) with the attempt they name behind the record's: use CurrentRunner.
	Runner        string `json:"runner,omitempty"`
	RunnerBoot    string `json:"runner_boot,omitempty"`
	RunnerAttempt int    `json:"runner_attempt,omitempty"`
	// Priority is the job's class; empty on records from before classes: read as normal.
	Priority Priority `json:"priority,omitempty"`
	// Program is the program the job was submitted for; "" is the anonymous program.
	Program string `json:"program,omitempty"`
	// Idempotency names the Idempotency-Key claim the job was submitted under
	// (IdempotencyRef of its key): every later write of the record stamps the claim
	// anew, so that the key lives as long as its job (keepClaim).
	Idempotency string `json:"idempotency,omitempty"`
	// LoadOptions is the load-options token of the request body (LoadOptions.Token) when
	// the submitter decoded the body already; empty: Submit reads it from the body. It is
	// not stored: the queue subject carries it.
	LoadOptions string `json:"-"`

	// raw is the record as read (DecodeJob); later, once read from it, the members of it
	// this foreman does not know: a later foreman's fields, which a rewrite carries on
	// (laterFields) so that this foreman, running beside a later one or rolled back to,
	// does not drop what that one stored (its claims, its marks).
	raw       []byte
	later     map[string]json.RawMessage
	laterRead bool

	// submitSeq is the queue message Submit stored for the job, on the Job it returned:
	// CancelSubmitted deletes it by that sequence instead of looking for it. Not stored.
	submitSeq uint64
}

// CurrentRunner is the target name and boot id of the foreman that started the record's
// attempt (its last one, for an ended job); empty when that foreman did not say (one
// from before runners were named, or no attempt yet). Runner fields naming an earlier
// attempt are not the current one's.
func (j *Job) CurrentRunner() (name, boot string) {
	if j.Attempt == 0 || j.RunnerAttempt != j.Attempt {
		return "", ""
	}
	return j.Runner, j.RunnerBoot
}

// jobMembers are the JSON members Job has.
var jobMembers = sync.OnceValue(func() []string {
	var known []string
	t := reflect.TypeFor[Job]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			known = append(known, name)
		}
	}
	return known
})

// isJobMember reports whether member name fills a field of Job: encoding/json matches a
// member to a field's name in any case (simple folding, as strings.EqualFold).
func isJobMember(name string) bool {
	return slices.ContainsFunc(jobMembers(), func(known string) bool { return strings.EqualFold(name, known) })
}

// laterFields returns the members of j's record as read that Job does not have. It does
// not change j (a run may read it meanwhile): the caller keeps them on the job it writes.
func (j *Job) laterFields() map[string]json.RawMessage {
	if j.laterRead || len(j.raw) == 0 {
		return j.later
	}
	var all map[string]json.RawMessage
	if json.Unmarshal(j.raw, &all) != nil {
		return nil
	}
	var later map[string]json.RawMessage
	for name, v := range all {
		if !isJobMember(name) {
			if later == nil {
				later = map[string]json.RawMessage{}
			}
			later[name] = v
		}
	}
	return later
}

// encodeRecord is j's JSON with the later foreman's members it carries (laterFields)
// after its own.
func encodeRecord(j *Job, later map[string]json.RawMessage) ([]byte, error) {
	data, err := json.Marshal(j)
	if err != nil || len(later) == 0 {
		return data, err
	}
	names := slices.Sorted(maps.Keys(later))
	data = data[:len(data)-1] // the closing brace
	for _, name := range names {
		key, _ := json.Marshal(name)
		data = append(append(append(append(data, ','), key...), ':'), later[name]...)
	}
	return append(data, '}'), nil
}

// IsSpare reports whether a message at stream sequence seq is a spare copy of running
// job j rather than the message its attempt runs from. A record from before QueueSeq
// (written by an older foreman) cannot tell: its message is never judged a spare, since
// dropping the run's own message (a consumer reset at start counts its deliveries from 1
// again) would leave the job running forever.
func (j *Job) IsSpare(seq uint64) bool {
	if j.State != StateLoading && j.State != StateWorking {
		return false
	}
	return j.QueueSeq != 0 && j.QueueSeq != seq
}

// Artifact returns the metadata of the named artifact.
func (j *Job) Artifact(name string) (Artifact, bool) {
	for _, a := range j.Artifacts {
		if a.Name == name {
			return a, true
		}
	}
	return Artifact{}, false
}

// NewID returns a new id: a ULID on this host's clock. A job's id is made by
// Store.NewID, on the NATS server's clock; NewID is for other ids (a boot id).
func NewID() string { return ulid.Make().String() }

// NewID returns a new job id: a ULID whose time is the NATS server's (ServerNow), the
// clock that stamps the job's records, so ids sort by creation time whatever this
// host's clock says. GET /jobs pages by that order against the records' stamps
// (ADR-0025), and an idempotent retry takes a job's age from its id (Resubmit): an id
// on a host clock minutes ahead of the server's had its job left off every page, and one
// stepped back sorted new jobs below older ones.
//
// Ids made one after the other sort in that order: ServerNow steps back a little at
// each new reading of the server's clock (the answer's transit), which put an id made
// after another in the millisecond before it, or in the same one with a random part
// drawn afresh (a monotonic entropy draws afresh at every new millisecond), and a page
// of GET /jobs listed the two out of their order. A step back of up to idStepBack keeps
// the last id's millisecond, counting on within it; a longer one (the server's clock
// set back) is taken as it is.
func (s *Store) NewID() string {
	return s.ids.next(ulid.Timestamp(s.ServerNow()))
}

// idStepBack is the longest step back of ServerNow that NewID holds its ids' order over.
const idStepBack = time.Second

// idSource makes ULIDs that sort in the order they were made (NewID).
type idSource struct {
	mu      sync.Mutex
	last    uint64 // the millisecond of the last id
	entropy *ulid.MonotonicEntropy
}

// next returns a new ULID at millisecond ms, or at the last id's when ms is at most
// idStepBack before it, its random part then counted on from the last's.
func (g *idSource) next(ms uint64) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.entropy == nil {
		g.entropy = ulid.Monotonic(cryptorand.Reader, 0)
	}
	if ms < g.last && g.last-ms <= uint64(idStepBack.Milliseconds()) {
		ms = g.last
	}
	id, err := ulid.New(ms, g.entropy)
	if err != nil { // the random part ran out within ms (ErrMonotonicOverflow): the next one
		ms++
		id = ulid.MustNew(ms, g.entropy)
	}
	g.last = ms
	return id.String()
}

// idTime is the time job id names, zero for an id that is no ULID.
func idTime(id string) time.Time {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return time.Time{}
	}
	return ulid.Time(u.Time())
}

// ValidateID checks that id is a ULID in canonical form.
func ValidateID(id string) error {
	u, err := ulid.ParseStrict(id)
	if err != nil || u.String() != id {
		return fmt.Errorf("%w: %s", ErrBadID, quoteClipped(id))
	}
	return nil
}

// maxQuotedName is how much of a refused id or name an error quotes: enough to know it
// again, not the megabyte a request line or header may carry back into its answer.
const maxQuotedName = 64

// quoteClipped quotes s, cut to maxQuotedName bytes (at a rune's start) and marked so.
func quoteClipped(s string) string {
	if c, cut := Clip(s, maxQuotedName); cut {
		return strconv.Quote(c) + "…"
	}
	return strconv.Quote(s)
}

// Clip returns s cut to at most n bytes at a character's start, and whether it cut: for
// quoting a caller's or a target's text back in an error, a record or a log.
func Clip(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut], true
}

func jobKey(id string) string { return "job." + id }
