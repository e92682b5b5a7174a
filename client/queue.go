package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Queue is foreman's queue as GET /queue shows it: the running job, the models loaded,
// and the waiting jobs in the order foreman expects to run them.
type Queue struct {
	// Running is the job running now; nil when foreman is idle.
	Running *Job `json:"running"`
	// Loaded are the models foreman counts as loaded on the Ollama server.
	Loaded []string `json:"loaded"`
	// Queued are the first waiting jobs (as many as the limit asked), position 1 first.
	Queued []QueuedJob `json:"queued"`
	// Total is the number of waiting jobs this foreman's worker runs, shown or not.
	Total int `json:"total"`
	// Depth is the waiting jobs per model (normalized names), shown or not, those of
	// WaitingElsewhere included.
	Depth map[string]int `json:"depth"`
	// RunningElsewhere are the jobs of a queue shared by several foremen that another
	// foreman's worker runs now; they are neither in Queued nor in Total.
	RunningElsewhere []ElsewhereJob `json:"running_elsewhere"`
	// WaitingElsewhere are the waiting jobs of a queue shared by several foremen that
	// this foreman's worker leaves to the others (the first ones, as many as the limit
	// asked, oldest first): its Mac lacks their model, or is down while another has it.
	// They have no QueuePosition or ETA, and are not in Total.
	WaitingElsewhere []QueuedJob `json:"waiting_elsewhere"`
	// Paused says why foreman's worker takes no job now; nil while it runs.
	Paused *Pause `json:"paused"`
	// Targets are the Ollama servers: this foreman's (Own) and those of the other live
	// foremen on its NATS.
	Targets []QueueTarget `json:"targets"`
	// Now is foreman's time when it answered, on the clock of ETA and CreatedAt (the
	// NATS server's); zero from a foreman that does not say it. Take spans to those
	// against it (ETA.Sub(Now)), not against this host's clock, which may be off.
	Now time.Time `json:"now,omitzero"`
	// Raw is the response body as foreman sent it.
	Raw json.RawMessage `json:"-"`
}

// QueueTarget is an Ollama server of Queue.Targets.
type QueueTarget struct {
	// Name is its foreman's FOREMAN_TARGET_NAME.
	Name string `json:"name"`
	// Reachable says it answered its foreman's last poll.
	Reachable bool     `json:"reachable"`
	Loaded    []string `json:"loaded"`
	// Own marks this foreman's own target.
	Own bool `json:"own,omitempty"`
	// DownSince (own target only) is when its polls stopped being answered (refused,
	// unanswered, or a proxy's 502/504); nil while they are answered, an error status
	// other than those included.
	DownSince *time.Time `json:"down_since,omitempty"`
	// Error (own target only) is the last poll's failure; empty after one that succeeded.
	Error string `json:"error,omitempty"`
}

// OwnTarget is this foreman's own target of q.Targets; nil when foreman named none
// (one from before targets were listed).
func (q *Queue) OwnTarget() *QueueTarget {
	for i := range q.Targets {
		if q.Targets[i].Own {
			return &q.Targets[i]
		}
	}
	return nil
}

// ElsewhereJob is a job another foreman's worker runs (Queue.RunningElsewhere).
type ElsewhereJob = broker.ElsewhereJob

// Pause is foreman's worker waiting for what it needs to run jobs: Reason, Since, and
// Error (the failure that began it, then each probe's).
type Pause = broker.Pause

// Why foreman's worker pauses (Pause.Reason).
const (
	// PauseTargetUnreachable: a job's call could not reach the Ollama server; the
	// worker waits until it answers again.
	PauseTargetUnreachable = broker.PauseTargetUnreachable
	// PauseStoreRefusesWrites: the job store refused a job's start write (a full disk, a
	// NATS cluster without a quorum); the worker waits until it takes writes again.
	PauseStoreRefusesWrites = broker.PauseStoreRefusesWrites
	// PauseTargetBusy: the Ollama server answered a job's call "not now" (503 with its
	// own queue full, a proxy's 429); the worker waits a back-off before the next call.
	PauseTargetBusy = broker.PauseTargetBusy
)

// QueuedJob is one waiting job of a Queue.
type QueuedJob struct {
	JobID    string `json:"job_id"`
	Model    string `json:"model"`
	Kind     Kind   `json:"kind"`
	Priority string `json:"priority"`
	Program  string `json:"program"`
	// CreatedAt is when the job entered the queue.
	CreatedAt time.Time `json:"created_at"`
	// QueuePosition is 1 for the job that runs next; 0 for a job of
	// Queue.WaitingElsewhere.
	QueuePosition int `json:"queue_position,omitempty"`
	// ETA is when the job is expected to start, from the mean run and load times foreman
	// measured per model; zero for a job of Queue.WaitingElsewhere.
	ETA time.Time `json:"eta,omitzero"`
	// State is StateRetrying for a job backing off after a failed attempt, with that
	// attempt's number (Attempts: 0 when it was not counted, Ollama having answered
	// "not now" or a stop having cut it short) and error; empty for one waiting its first
	// turn (or whose record foreman did not read for the view).
	State    State  `json:"state,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	Error    string `json:"error,omitempty"`
	// LeftElsewhere says foreman's worker leaves the job to another Mac that has its
	// model: it gave up an attempt of the job's queue for its own Mac's silence (a stall),
	// and takes none of the queue's jobs meanwhile. QueuePosition and ETA are then for a
	// run on this foreman's Mac after that wait, should no other Mac take the job first.
	LeftElsewhere bool `json:"left_elsewhere,omitempty"`
}

// Queue reads the queue (GET /queue). limit caps the waiting jobs listed (1 to
// 100000); 0 leaves foreman's default, the first 100.
func (c *Client) Queue(ctx context.Context, limit int) (*Queue, error) {
	path := "/queue"
	if limit > 0 {
		path += "?limit=" + strconv.Itoa(limit)
	}
	resp, err := c.request(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	// The answer lists at most the waiting jobs asked for (foreman's default is 100).
	shown := min(limit, maxQueuePage)
	if shown <= 0 {
		shown = 100
	}
	// Two lists of them: queued and waiting_elsewhere.
	raw, err := c.readAnswer(ctx, resp.Body, http.MethodGet, path, maxListBase+2*shown*maxQueueEntry)
	if err != nil {
		return nil, err
	}
	var q Queue
	if err := c.decodeObject(resp, raw, &q, http.MethodGet, path); err != nil {
		return nil, err
	}
	if q.Running != nil {
		if err := q.Running.check(http.MethodGet, path); err != nil {
			return nil, err
		}
		q.Running.normalize()
	}
	for _, j := range append(q.Queued[:len(q.Queued):len(q.Queued)], q.WaitingElsewhere...) {
		if j.JobID == "" {
			return nil, fmt.Errorf("client: GET %s: a waiting job without id", path)
		}
	}
	q.Raw = raw
	return &q, nil
}
