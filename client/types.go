package client

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Ollama's wire types, as foreman relays them.
type (
	ChatRequest       = ollama.ChatRequest
	ChatResponse      = ollama.ChatResponse
	Message           = ollama.Message
	GenerateRequest   = ollama.GenerateRequest
	GenerateResponse  = ollama.GenerateResponse
	EmbedRequest      = ollama.EmbedRequest
	EmbedResponse     = ollama.EmbedResponse
	ListResponse      = ollama.ListResponse
	ListModelResponse = ollama.ListModelResponse
	ProcessResponse   = ollama.ProcessResponse
	ProcessModel      = ollama.ProcessModelResponse
)

// State is where a job is in its life: queued, loading, working, retrying, done, failed
// or canceled.
type State = broker.State

// The job states; done, failed and canceled are terminal (State.Terminal).
const (
	StateQueued   = broker.StateQueued
	StateLoading  = broker.StateLoading
	StateWorking  = broker.StateWorking
	StateRetrying = broker.StateRetrying
	StateDone     = broker.StateDone
	StateFailed   = broker.StateFailed
	StateCanceled = broker.StateCanceled
)

// Kind is what a job asks of Ollama.
type Kind = broker.Kind

// The kinds a job can have through POST /jobs.
const (
	KindChat     = broker.KindChat
	KindGenerate = broker.KindGenerate
	KindEmbed    = broker.KindEmbed
)

// Job is a job's record as GET /jobs/{id} returns it.
type Job struct {
	ID         string     `json:"id"`
	Kind       Kind       `json:"kind"`
	Model      string     `json:"model"`
	State      State      `json:"state"`
	Attempts   int        `json:"attempts"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Error      string     `json:"error,omitempty"`
	// Result is Ollama's final response in its non-streamed shape; absent while the job
	// runs, and for a result too large to inline (then it is the "result.json" artifact).
	Result    json.RawMessage `json:"result,omitempty"`
	Artifacts []Artifact      `json:"artifacts,omitempty"`
	// CancelRequested is the reason of a cancel a running job has not yet acted on (a
	// Cancel of a running job that did not end within a few seconds).
	CancelRequested string `json:"cancel_requested,omitempty"`
	// Priority is the job's class: high, normal or low.
	Priority string `json:"priority,omitempty"`
	// Program is the program the job belongs to: the name of the token that submitted
	// it, else the program the submit named; empty for the anonymous program.
	Program string `json:"program,omitempty"`
	// Runner is the name of the Mac (its foreman's FOREMAN_TARGET_NAME) that runs the
	// job's attempt, or ran its last one; empty before the first. RunnerGone, set by Job
	// for a running job, says that Mac's foreman is gone: the job runs again once its
	// queue message comes back (after FOREMAN_ACK_WAIT), on a Mac that has its model.
	Runner     string `json:"runner,omitempty"`
	RunnerGone bool   `json:"runner_gone,omitempty"`
	// QueuePosition (1 runs next) and ETA (the expected start) are set by Job for a job
	// that waits (queued or retrying); 0 and nil otherwise.
	QueuePosition int        `json:"queue_position,omitempty"`
	ETA           *time.Time `json:"eta,omitempty"`
	// LeftElsewhere, with them, says the foreman asked leaves the job to another Mac that
	// has its model for now (QueuedJob.LeftElsewhere).
	LeftElsewhere bool `json:"left_elsewhere,omitempty"`
	// WaitingElsewhere, set by Job instead of them, says the foreman asked leaves the
	// waiting job to other Macs: its own Mac lacks the model, or is down while another
	// has it (Queue.WaitingElsewhere).
	WaitingElsewhere bool `json:"waiting_elsewhere,omitempty"`
	// Now, set by Job and Cancel, is foreman's time when it answered (its HTTP Date,
	// to the second, raised to a stamp of the record within that second): take the job's
	// ages against it (Now.Sub(CreatedAt)), as a list's against JobList.Now, not against
	// this host's clock, which may be off. Zero elsewhere, and for an answer without Date.
	// It is no member of the record.
	Now time.Time `json:"-"`
}

// normalize drops a "result": null, so an absent result is always a nil Result.
func (j *Job) normalize() {
	if string(j.Result) == "null" {
		j.Result = nil
	}
}

// check rejects an answer that is no job record: every record has an id and a state.
// Without the check a watch would wait forever for a state that never comes. A state this
// client does not know passes: a newer foreman may have more, and a list must not fail
// for one row.
func (j *Job) check(method, path string) error {
	if j.ID == "" || j.State == "" {
		return fmt.Errorf("client: %s %s: the answer is no job record (id %q, state %q)", method, path, j.ID, j.State)
	}
	return nil
}

// Artifact describes one stored output of a job. GET /jobs/{id} embeds small artifacts in
// Data (text as is, anything else base64 with Encoding "base64"); others have a URL and are
// read with Client.Artifact.
type Artifact struct {
	Name        string  `json:"name"`
	ContentType string  `json:"content_type"`
	Size        int64   `json:"size"`
	Data        *string `json:"data,omitempty"`
	Encoding    string  `json:"encoding,omitempty"`
	URL         string  `json:"url,omitempty"`
}

// Bytes returns the inline content, decoded; ok is false when the artifact is not inline.
func (a *Artifact) Bytes() (data []byte, ok bool) {
	if a.Data == nil {
		return nil, false
	}
	if a.Encoding == "base64" {
		b, err := base64.StdEncoding.DecodeString(*a.Data)
		return b, err == nil
	}
	return []byte(*a.Data), true
}

// Event is one state change of a job, as published on foreman.job.<id>.state, delivered
// by webhook, or observed by polling.
//
// A lost event is no state change but a notice that Lost state events were dropped
// before it (see Watch): it has no JobID or State, At is when the loss was noticed and
// Error describes it. Re-read the jobs concerned with Job or Jobs.
type Event struct {
	JobID   string    `json:"job_id"`
	State   State     `json:"state"`
	Model   string    `json:"model"`
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error,omitempty"`
	// Lost, when > 0, makes this a lost event: that many state events were dropped, or,
	// after the NATS connection was down and came back, 1: the events published while it
	// was down (if any) were missed.
	Lost int `json:"lost,omitempty"`
}

// lostEvent reports n dropped state events.
func lostEvent(n int) Event {
	return Event{At: time.Now(), Lost: n, Error: fmt.Sprintf("%d state events lost: the reader fell behind", n)}
}

// reconnectEvent reports that the NATS connection was down and came back: how many state
// events were published meanwhile (none, maybe) is unknown.
func reconnectEvent() Event {
	return Event{At: time.Now(), Lost: 1, Error: "state events may have been lost: the NATS connection was down and is back"}
}

// closedEvent reports that the NATS connection closed for good (nats.go gave up
// reconnecting, or its owner closed it): no state event comes after it.
func closedEvent() Event {
	return Event{At: time.Now(), Lost: 1, Error: "state events will be lost: the NATS connection closed for good"}
}

// eventOfJob is the event a polled record stands for.
func eventOfJob(j *Job) Event {
	at := j.CreatedAt
	if j.StartedAt != nil {
		at = *j.StartedAt
	}
	if j.FinishedAt != nil {
		at = *j.FinishedAt
	}
	return Event{JobID: j.ID, State: j.State, Model: j.Model, Attempt: j.Attempts, At: at, Error: j.Error}
}

// eventOfRecord decodes a state event (the broker's job record JSON); one without a job
// id or a known state is no record.
// errUnknownState: a job record in a state this client does not know, as a later
// foreman may write one. It is no event to wait on, and no malformed delivery either.
var errUnknownState = errors.New("client: a job state this client does not know")

func eventOfRecord(data []byte) (Event, error) {
	r, err := broker.DecodeJob(data)
	if err != nil {
		return Event{}, err
	}
	if r.ID != "" && r.State != "" && !r.State.Valid() {
		return Event{}, fmt.Errorf("%w: job %s is %q", errUnknownState, r.ID, r.State)
	}
	if r.ID == "" || !r.State.Valid() {
		return Event{}, fmt.Errorf("client: not a job record (id %q, state %q)", r.ID, r.State)
	}
	return Event{JobID: r.ID, State: r.State, Model: r.Model, Attempt: r.Attempt, At: r.At, Error: r.Error}, nil
}

// same reports whether two events show the same state of the same attempt.
func (e Event) same(o Event) bool { return e.State == o.State && e.Attempt == o.Attempt }

// behind reports whether e is an older state of the job than o, told already: a job is
// queued only before its first start, every start counts its attempt (so a start comes
// after the retrying of the attempt before it), and an attempt loads before it works. A
// read of the job that finds it started tells that state before the webhook receiver or
// the NATS subscription brings the events that led to it (queued, loading), and telling
// those then would tell the job's states backwards (working, queued, working, done).
func (e Event) behind(o Event) bool {
	if o.State.Terminal() {
		return true
	}
	switch e.State {
	case StateQueued:
		return o.State != StateQueued
	case StateLoading, StateWorking:
		switch o.State {
		case StateRetrying:
			return e.Attempt <= o.Attempt
		case StateLoading, StateWorking:
			return e.Attempt < o.Attempt || e.Attempt == o.Attempt && e.State == StateLoading && o.State == StateWorking
		}
	}
	return false
}

// JobFilter selects jobs for Jobs; zero fields do not filter.
type JobFilter struct {
	// State lists the jobs in one state only; States in any of several (State joins
	// them): States{StateDone, StateFailed, StateCanceled} lists the finished jobs.
	State  State
	States []State
	Model  string
	// Program lists one program's jobs only.
	Program string
	// Limit caps the page (server default 50). A page may hold fewer jobs while more
	// match (at most 8 MiB of results a page): page on while NextCursor is set.
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

// JobList is one page of jobs, newest first.
type JobList struct {
	Jobs []Job `json:"jobs"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
	// Now is foreman's time when it answered, on the clock that stamps the jobs'
	// CreatedAt (foreman's own: Queue.Now is the NATS server's); zero from a foreman that
	// does not say it. Take a job's age against it (Now.Sub(CreatedAt)), not against
	// this host's clock, which may be off.
	Now time.Time `json:"now,omitzero"`
}
