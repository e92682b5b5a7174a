package broker

import (
	"strconv"
	"sync"
	"time"
)

// WroteState reports whether this Store wrote job event j's state change (its state at
// its attempt): on a shared NATS every foreman sees every job's events, and what one
// foreman did (its worker's starts and ends, its gateway's cancels, its expiries) is
// told apart from the others' by it. A store of its own (Config.Exclusive) wrote every
// change there is, and notes none. A Store on a shared NATS remembers its changes of the
// last job TTL or two, at most 50,000 or so, each from just before its write (the
// event may come before the write's answer): a change's event comes at once, and a
// job's events end a job TTL after its last write at most (ADR-0145). A write that lost
// to another writer's is forgotten, though that one's event may have come first (two
// foremen expiring one job at the same instant may both count it).
func (s *Store) WroteState(j *Job) bool {
	return s.cfg.Exclusive || s.own.has(j)
}

// maxOwnWrites bounds ownWrites: past it, the older half is forgotten.
const maxOwnWrites = 50_000

// ownWrites is the state changes a Store wrote, by job, state and attempt: cur those
// noted since, prev those of the job TTL before.
type ownWrites struct {
	mu        sync.Mutex
	cur, prev map[string]struct{}
	since     time.Time
}

func ownKey(j *Job) string { return j.ID + " " + string(j.State) + " " + strconv.Itoa(j.Attempt) }

// note notes j's change, written at now; ttl is the job TTL in force. Changes noted a
// job TTL ago or longer are forgotten on the way: cur becomes prev once it spans a job
// TTL (or holds half the bound), and both go once the newest of them is that old.
func (o *ownWrites) note(j *Job, now time.Time, ttl time.Duration) {
	k := ownKey(j)
	o.mu.Lock()
	defer o.mu.Unlock()
	switch age := now.Sub(o.since); {
	case age >= 2*ttl:
		o.prev, o.cur, o.since = nil, nil, now
	case age >= ttl || len(o.cur) >= maxOwnWrites/2:
		o.prev, o.cur, o.since = o.cur, nil, now
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

// known is how many changes o holds (tests).
func (o *ownWrites) known() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.cur) + len(o.prev)
}
