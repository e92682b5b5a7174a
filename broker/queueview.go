package broker

import (
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// QueueView is the queue as foreman expects to run it (GET /queue): what runs, what the
// target has loaded, and the waiting jobs in the order the worker's pick rule will take
// them.
type QueueView struct {
	// Running is the id of the job the worker runs now, "" when it is idle.
	Running string
	// Loaded are the models the worker counts as loaded on the target.
	Loaded []string
	// Queued are the waiting jobs (queued or retrying) this worker runs, position 1
	// first.
	Queued []QueuedJob
	// WaitingElsewhere are the waiting jobs whose model this worker does not run now
	// (several foremen on one NATS: only other Macs have it, or this Mac is down and
	// another has it), oldest first, with no QueuePosition or ETA: this worker's plan
	// leaves them to the others, and counts none of their time before its own jobs.
	WaitingElsewhere []QueuedJob
	// Elsewhere are the jobs another foreman's worker runs (their records say loading or
	// working) while their messages stay in the shared queue, oldest first.
	Elsewhere []ElsewhereJob
	// Paused says why the worker takes no job now (the target is unreachable, the job
	// store refuses writes); nil while it runs. The ETAs then assume it resumes at once.
	Paused *Pause
	// At is when the view was computed.
	At time.Time

	// index is each waiting job's place by id: i+1 for Queued[i], -(i+1) for
	// WaitingElsewhere[i]; depth the waiting jobs per normalized model. Made once by
	// Indexed, so that a lookup of one job (GET /jobs/{id}) or the depth (GET /queue)
	// costs no pass over a deep queue per request.
	index map[string]int
	depth map[string]int
}

// Indexed makes v's index of its waiting jobs (Find) and their depth per model (Depth),
// and returns v. Call it once, before v is shared.
func (v *QueueView) Indexed() *QueueView {
	v.index = make(map[string]int, len(v.Queued)+len(v.WaitingElsewhere))
	v.depth = map[string]int{}
	// A job listed twice (a requeued job whose old message is still in the queue) is
	// found at its first place, Queued before WaitingElsewhere, as a scan of the lists
	// finds it: its first message is the one the worker takes.
	for i, j := range v.Queued {
		if _, ok := v.index[j.JobID]; !ok {
			v.index[j.JobID] = i + 1
		}
	}
	for i, j := range v.WaitingElsewhere {
		if _, ok := v.index[j.JobID]; !ok {
			v.index[j.JobID] = -(i + 1)
		}
	}
	// Counted by model name first: a queue of thousands has a few names, each normalized
	// once.
	names := map[string]int{}
	for _, jobs := range [][]QueuedJob{v.Queued, v.WaitingElsewhere} {
		for _, j := range jobs {
			names[j.Model]++
		}
	}
	for name, n := range names {
		v.depth[ollama.NormalizeModel(name)] += n
	}
	return v
}

// Find is the waiting job id: in Queued, or in WaitingElsewhere (elsewhere true); ok is
// false when v holds neither.
func (v *QueueView) Find(id string) (j QueuedJob, elsewhere, ok bool) {
	if v.index == nil { // a view made without Indexed
		for _, q := range v.Queued {
			if q.JobID == id {
				return q, false, true
			}
		}
		for _, q := range v.WaitingElsewhere {
			if q.JobID == id {
				return q, true, true
			}
		}
		return QueuedJob{}, false, false
	}
	switch i := v.index[id]; {
	case i > 0:
		return v.Queued[i-1], false, true
	case i < 0:
		return v.WaitingElsewhere[-i-1], true, true
	}
	return QueuedJob{}, false, false
}

// Depth is the waiting jobs (Queued and WaitingElsewhere) per normalized model name
// (tiny-a and tiny-a:latest are one). Shared with every caller of an Indexed view: do
// not modify it.
func (v *QueueView) Depth() map[string]int {
	if v.depth != nil {
		return v.depth
	}
	depth := map[string]int{}
	for _, jobs := range [][]QueuedJob{v.Queued, v.WaitingElsewhere} {
		for _, j := range jobs {
			depth[ollama.NormalizeModel(j.Model)]++
		}
	}
	return depth
}

// Why a worker pauses (Pause.Reason).
const (
	// PauseTargetUnreachable: a job's call could not reach the target; the worker waits
	// until it answers again.
	PauseTargetUnreachable = "target_unreachable"
	// PauseStoreRefusesWrites: the job store refused a job's start write (a full disk, a
	// cluster without a quorum); the worker probes it until it takes writes again.
	PauseStoreRefusesWrites = "store_refuses_writes"
	// PauseTargetBusy: the target answered a job's call "not now" (Ollama's 503 with
	// its own queue full, a proxy's 429); the worker waits a back-off before the next.
	PauseTargetBusy = "target_busy"
)

// Pause is a worker waiting, jobs or not, for what it needs to run them.
type Pause struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// Error is the failure that started the pause, or the latest probe's.
	Error string `json:"error"`
	// RestartNeeded says the pause lasts until foreman restarts: the job store has a
	// fault no write outlasts (Store.WriteFault: the embedded server's stream that failed
	// a write on a full disk, its data directory removed), not one it recovers from.
	RestartNeeded bool `json:"restart_needed,omitempty"`
	// began is Since with this host's monotonic reading, which Since (UTC, as shown)
	// lacks; zero in a pause read from elsewhere. See Began.
	began time.Time
}

// NewPause is a pause for reason, begun at by this host's clock: Since is at in UTC, and
// Began keeps at's monotonic reading. errText is its Error.
func NewPause(reason string, at time.Time, errText string) *Pause {
	return &Pause{Reason: reason, Since: at.UTC(), Error: errText, began: at}
}

// Began is when the pause began, for a span to now (time.Since): with this host's
// monotonic reading when this process made the pause (NewPause), so that a step of the
// wall clock since (NTP, a VM resumed, a laptop's sleep) does not lengthen or shorten
// the outage a sync call waits out; Since otherwise.
func (p *Pause) Began() time.Time {
	if !p.began.IsZero() {
		return p.began
	}
	return p.Since
}

// BeganAt sets when the pause began, as NewPause does: Since at in UTC, Began at.
func (p *Pause) BeganAt(at time.Time) {
	p.Since, p.began = at.UTC(), at
}

// QueuedJob is one waiting job in a QueueView.
type QueuedJob struct {
	JobID    string   `json:"job_id"`
	Model    string   `json:"model"`
	Kind     Kind     `json:"kind"`
	Priority Priority `json:"priority"`
	Program  string   `json:"program"`
	// CreatedAt is when the job's message entered the queue.
	CreatedAt time.Time `json:"created_at"`
	// QueuePosition is 1 for the job that runs next; 0 (left out) for a job waiting for
	// another Mac (QueueView.WaitingElsewhere).
	QueuePosition int `json:"queue_position,omitempty"`
	// ETA is when the job is expected to start; zero (left out) as QueuePosition.
	ETA time.Time `json:"eta,omitzero"`
	// State is StateRetrying for a job backing off after a failed attempt, with that
	// attempt's number and error (one line, at most 300 bytes), as its record says: the
	// view reads the records at the head of each queue, where such a job stays. Empty for
	// one waiting its first turn, or whose record the view did not read.
	State    State  `json:"state,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Error    string `json:"error,omitempty"`
	// LeftElsewhere says the worker leaves the job's queue to another Mac that has its
	// model (ADR-0066): it gave up an attempt of the queue's first job for its Mac's
	// silence (a stall), and takes none of the queue's jobs until another Mac starts that
	// one, none offers the model any more, or FOREMAN_MAX_WAIT passed since. Its
	// QueuePosition and ETA are then for running here after that wait, should no other
	// Mac take it first.
	LeftElsewhere bool `json:"left_elsewhere,omitempty"`
}

// ElsewhereJob is a job of the queue that another foreman's worker runs.
type ElsewhereJob struct {
	JobID    string   `json:"job_id"`
	Model    string   `json:"model"`
	Kind     Kind     `json:"kind"`
	Priority Priority `json:"priority"`
	Program  string   `json:"program"`
	// CreatedAt is when the job's message entered the queue.
	CreatedAt time.Time `json:"created_at"`
	// State is loading or working, as its record said when the view was computed.
	State State `json:"state"`
	// StartedAt is when the job first started (its record's started_at).
	StartedAt *time.Time `json:"started_at,omitempty"`
	// Runner is the target name of the foreman whose worker runs it (ADR-0064); empty
	// for a record from before runners were named.
	Runner string `json:"runner,omitempty"`
	// RunnerGone says that foreman is gone (its presence lapsed): the job was cut short
	// and runs again once its message comes back (FOREMAN_ACK_WAIT after its last
	// renewal) to a worker whose Mac has its model. Its record still says loading or
	// working until then.
	RunnerGone bool `json:"runner_gone,omitempty"`
}

// maxPauseText bounds a pause's error: each poll of the queue view carries it, and a
// terminal shows it on one line.
const maxPauseText = 300

// PauseText is err's text on one line (whitespace and control characters as single
// spaces: a proxy's HTML error page, say) and at most maxPauseText bytes.
func PauseText(err error) string {
	if err == nil {
		return ""
	}
	var b strings.Builder
	space := false
	for _, r := range err.Error() {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > maxPauseText {
			return b.String() + " …"
		}
		b.WriteRune(r)
	}
	return b.String()
}
