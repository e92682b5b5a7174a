package broker

import (
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// stateHub hands the job state events to the OnJobEvents and OnJobChange callbacks
// through one subscription to every job's state subject, each event decoded once. A
// subscription per watched job (the worker watches every job it runs) would be made and
// dropped with each run, and each costs the server an update of its subscription cache.
type stateHub struct {
	mu   sync.Mutex
	sub  *nats.Subscription
	next uint64
	all  map[uint64]func(*Job)
	jobs map[string]map[uint64]func(*Job)
}

// add registers fn for the events of job id, or of every job when id is "". The first
// registration subscribes; the events published after add returns reach fn, as the
// subscription request goes out before anything the caller publishes next.
func (h *stateHub) add(nc *nats.Conn, id string, fn func(*Job)) (stop func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sub == nil {
		sub, err := nc.Subscribe(StateWildcard, h.receive)
		if err != nil {
			return nil, fmt.Errorf("subscribe to job events: %w", err)
		}
		h.sub, h.all, h.jobs = sub, map[uint64]func(*Job){}, map[string]map[uint64]func(*Job){}
	}
	h.next++
	key := h.next
	if id == "" {
		h.all[key] = fn
	} else {
		if h.jobs[id] == nil {
			h.jobs[id] = map[uint64]func(*Job){}
		}
		h.jobs[id][key] = fn
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if id == "" {
				delete(h.all, key)
				return
			}
			delete(h.jobs[id], key)
			if len(h.jobs[id]) == 0 {
				delete(h.jobs, id)
			}
		})
	}, nil
}

// receive runs on the subscription's dispatcher: the callbacks see each job's events in
// order.
func (h *stateHub) receive(m *nats.Msg) {
	id := strings.TrimSuffix(strings.TrimPrefix(m.Subject, jobPrefix), ".state")
	h.mu.Lock()
	fns := make([]func(*Job), 0, len(h.all)+len(h.jobs[id]))
	for _, fn := range h.all {
		fns = append(fns, fn)
	}
	for _, fn := range h.jobs[id] {
		fns = append(fns, fn)
	}
	h.mu.Unlock()
	if len(fns) == 0 {
		return
	}
	j, err := DecodeJob(m.Data)
	if err != nil {
		return
	}
	for _, fn := range fns {
		fn(j)
	}
}
