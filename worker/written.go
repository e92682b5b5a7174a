package worker

import (
	"sync"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// maxWritten bounds writtenRecs: entries of attempts that ended without a terminal write
// (handed back, retried) are dropped with the rest when it is reached.
const maxWritten = 16

// writtenRecs keeps, per job, the record the worker last wrote for its running attempt
// and that write's revision, so that the attempt's next write (working, terminal) starts
// from it instead of reading the record again: a round trip and a decode fewer per job.
// It is only a starting point: the write is conditional on the revision, and a write by
// anyone else in between (a cancel request, a refresh) makes it read the record and apply
// its change again (Store.ModifyFrom).
type writtenRecs struct {
	mu sync.Mutex
	m  map[string]writtenRec
}

type writtenRec struct {
	job *broker.Job
	rev uint64
}

// put keeps j, written at revision rev.
func (w *writtenRecs) put(j *broker.Job, rev uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil || len(w.m) >= maxWritten {
		w.m = map[string]writtenRec{}
	}
	w.m[j.ID] = writtenRec{j, rev}
}

// take returns and forgets the record kept for job id.
func (w *writtenRecs) take(id string) (*broker.Job, uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.m[id]
	delete(w.m, id)
	return r.job, r.rev, ok
}
