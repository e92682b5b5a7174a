package broker

import (
	"strconv"
	"sync"
)

// WroteState reports whether this Store wrote job event j's state change (its state at
// its attempt): on a shared NATS every foreman sees every job's events, and what one
// foreman did (its worker's starts and ends, its gateway's cancels, its expiries) is
// told apart from the others' by it. A store of its own (Config.Exclusive) wrote every
// change there is. A Store remembers its last 50,000 or so changes, each from just
// before its write (the event may come before the write's answer); a write that lost to
// another writer's is forgotten, though that one's event may have come first (two
// foremen expiring one job at the same instant may both count it).
func (s *Store) WroteState(j *Job) bool {
	return s.cfg.Exclusive || s.own.has(j)
}

// maxOwnWrites bounds ownWrites: past it, the older half is forgotten.
const maxOwnWrites = 50_000

// ownWrites is the state changes a Store wrote, by job, state and attempt.
type ownWrites struct {
	mu        sync.Mutex
	cur, prev map[string]struct{}
}

func ownKey(j *Job) string { return j.ID + " " + string(j.State) + " " + strconv.Itoa(j.Attempt) }

func (o *ownWrites) note(j *Job) {
	k := ownKey(j)
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.cur) >= maxOwnWrites/2 {
		o.prev, o.cur = o.cur, nil
	}
	if o.cur == nil {
		o.cur = map[string]struct{}{}
	}
	o.cur[k] = struct{}{}
}

func (o *ownWrites) has(j *Job) bool {
	k := ownKey(j)
	o.mu.Lock()
	defer o.mu.Unlock()
	_, in := o.cur[k]
	if !in {
		_, in = o.prev[k]
	}
	return in
}

func (o *ownWrites) forget(j *Job) {
	k := ownKey(j)
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.cur, k)
	delete(o.prev, k)
}
