package broker

import "time"

// QueueView is the queue as foreman expects to run it (GET /queue): what runs, what the
// target has loaded, and the waiting jobs in the order the worker's pick rule will take
// them.
type QueueView struct {
	// Running is the id of the job the worker runs now, "" when it is idle.
	Running string
	// Loaded are the models the worker counts as loaded on the target.
	Loaded []string
	// Queued are the waiting jobs (queued or retrying), position 1 first.
	Queued []QueuedJob
	// At is when the view was computed.
	At time.Time
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
	// QueuePosition is 1 for the job that runs next.
	QueuePosition int `json:"queue_position"`
	// ETA is when the job is expected to start.
	ETA time.Time `json:"eta"`
}
