package worker

import (
	"slices"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// planned is one queued job in the order the worker is expected to run it.
type planned struct {
	Msg broker.QueuedMessage
	// Position is 1 for the job that runs next.
	Position int
	// Start is when it is expected to start.
	Start time.Time
}

// costs tells how long a job of a model is expected to take: to run, and to load its
// runner first when another one is loaded (a swap).
type costs interface {
	estimate(model string) (run, load time.Duration)
}

// order simulates the worker's successive picks over the queued messages msgs (oldest
// first), starting from the state c (its Heads are ignored) with the target free at
// free: each pick is plan's first queue, whose next job then becomes its head, and the
// current runner, its consecutive count, the programs' turns, the loaded runners and the
// clock advance as the worker's would. Loading a runner that is not loaded costs its
// load time and evicts the least recently used one (withLoaded).
// picks is the worker's count of picks so far (the scale of c.Served).
//
// Jobs in a retry back-off are ordered as if ready: they are waiting too. Messages on a
// queue subject foreman does not make are left out (the worker removes them).
func order(c choice, picks uint64, msgs []broker.QueuedMessage, free time.Time, cost costs) []planned {
	queues := map[string][]broker.QueuedMessage{}
	var tokens []string
	for _, m := range msgs {
		if !broker.TokenValid(m.Token) {
			continue
		}
		if _, ok := queues[m.Token]; !ok {
			tokens = append(tokens, m.Token)
		}
		queues[m.Token] = append(queues[m.Token], m)
	}
	heads := make([]head, 0, len(tokens))
	slot := make(map[string]int, len(tokens)) // token -> index in heads
	for _, t := range tokens {
		slot[t] = len(heads)
		heads = append(heads, queueHead(t, queues[t][0]))
	}
	c.Served = cloneServed(c.Served)
	c.Loaded = slices.Clone(c.Loaded)
	out := make([]planned, 0, len(msgs))
	at := free
	for len(heads) > 0 {
		c.Heads, c.Now = heads, at
		tok := plan(c)[0]
		q := queues[tok]
		m := q[0]
		out = append(out, planned{Msg: m, Position: len(out) + 1, Start: at})

		r := runnerOf(tok)
		run, load := cost.estimate(m.Model)
		if !slices.Contains(c.Loaded, r) {
			at = at.Add(load)
		}
		c.Loaded = withLoaded(c.Loaded, r)
		at = at.Add(run)
		if r == c.Current {
			c.Consecutive++
		} else {
			c.Current, c.Consecutive = r, 1
		}
		picks++
		c.Served[tok] = picks

		queues[tok] = q[1:]
		i := slot[tok]
		if len(q) > 1 {
			heads[i] = queueHead(tok, q[1])
			continue
		}
		// The queue ran empty: its program's turn is forgotten (forgetTurns).
		delete(c.Served, tok)
		last := len(heads) - 1
		heads[i] = heads[last]
		slot[heads[i].Token] = i
		heads = heads[:last]
		delete(slot, tok)
	}
	return out
}

// queueHead is the head a queue with oldest message m has.
func queueHead(token string, m broker.QueuedMessage) head {
	h := head{Token: token, Seq: m.Seq, Enqueued: m.Enqueued}
	if k, err := broker.ParseQueueKey(token); err == nil {
		h.Runner, h.Class = k.Runner(), k.Class
	}
	return h
}

// cloneServed copies turns the simulation may change (never nil).
func cloneServed(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// withLoaded is loaded (most recently used first) after runner r ran: r first, and when
// it was not loaded, in place of the least recently used one once as many are loaded as
// before (one, with none). It may reuse loaded's array.
func withLoaded(loaded []string, r string) []string {
	if i := slices.Index(loaded, r); i >= 0 {
		return slices.Insert(slices.Delete(loaded, i, i+1), 0, r)
	}
	capacity := max(len(loaded), 1)
	loaded = slices.Insert(loaded, 0, r)
	return loaded[:min(len(loaded), capacity)]
}
