package worker

import (
	"maps"
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
// current runner, its consecutive count and its streak's start, the programs' turns, the loaded runners and the
// clock advance as the worker's would. Loading a runner that is not loaded costs its
// load time and evicts the least recently used one (withLoaded). picks is the worker's
// count of picks so far (c.Served is in its turnAt scale).
//
// Jobs in a retry back-off are ordered as if ready: they are waiting too. Messages on a
// queue subject foreman does not make are left out (the worker removes them).
//
// held are the queues the worker leaves to another Mac (ADR-0066), by when it takes them
// again (on c's clock): each joins the picks, at the back of the rotation as the worker
// would (joinTurns), only once the simulated clock reaches that time; with nothing else
// to run before, the clock goes on to it. Nil for none: the only cost then is a lookup
// in the nil map per queue and a length check per pick.
//
// Cost: plan sees one head per runner and class (a group), not one per queue. Within a
// group plan's order is the programs' turns (served, then the head's age), so only the
// group's first queue can come first, and plan's choice between groups reads only
// their oldest job (age, and MaxWait via the enqueue time). Each pick thus costs a plan
// of a few heads plus a pass over the picked group's queues, and 10k jobs order in
// milliseconds (BenchmarkQueueView); orderEachQueue, which gives plan every queue,
// must agree (TestOrderMatchesPlanOfEveryQueue).
func order(c choice, picks uint64, msgs []broker.QueuedMessage, free time.Time, cost costs, held map[string]time.Time) []planned {
	sc := planScratch{groupHeads: true} // one head per group: its runner and class
	return orderWith(&sc, c, picks, msgs, free, cost, held)
}

// orderWith is order with the plan's scratch sc (its counts are read by tests).
func orderWith(sc *planScratch, c choice, picks uint64, msgs []broker.QueuedMessage, free time.Time, cost costs, held map[string]time.Time) []planned {
	type queue struct {
		token string
		msgs  []broker.QueuedMessage
		key   head      // the queue's Token, Runner and Class
		from  time.Time // when a held queue joins the picks
	}
	type group struct {
		queues []*queue
		rep    head // the group as plan sees it: its first queue with its oldest job
	}
	c.Served = cloneServed(c.Served)
	c.Loaded = slices.Clone(c.Loaded)
	// The resumed jobs go first while they head their queues (plan's first rule): taken
	// here from the queues themselves, since plan sees one head per group.
	resume := maps.Clone(c.Resume)
	c.Resume = nil
	groups := map[string]*group{}
	var order []*group // first seen first, so the heads' order does not depend on map order
	byToken := map[string]*queue{}
	groupOf := map[string]*group{} // each queue's group (runner and class)
	invalid := map[string]bool{}
	var later []*queue // held queues not yet in the picks
	attach := func(q *queue) *group {
		gk := q.key.Runner + " " + string(q.key.Class.OrNormal())
		g, ok := groups[gk]
		if !ok {
			g = &group{}
			groups[gk] = g
		}
		if len(g.queues) == 0 {
			// New, or left the picks when its queues ran empty and a held queue of its
			// runner and class joins now.
			order = append(order, g)
		}
		g.queues = append(g.queues, q)
		groupOf[q.token] = g
		return g
	}
	for _, m := range msgs {
		q, ok := byToken[m.Token]
		if !ok {
			if invalid[m.Token] || !broker.TokenValid(m.Token) {
				invalid[m.Token] = true
				continue
			}
			h := queueHead(m.Token, m)
			q = &queue{token: m.Token, key: head{Token: h.Token, Runner: h.runner(), Class: h.Class}}
			byToken[m.Token] = q
			if from, ok := held[m.Token]; ok && from.After(free) {
				// Not among the worker's heads while held: its turn is forgotten.
				q.from = from
				delete(c.Served, m.Token)
				later = append(later, q)
			} else {
				if _, ok := c.Served[m.Token]; !ok {
					c.Served[m.Token] = joinedAt(picks) // as the worker's next pick will (joinTurns)
				}
				attach(q)
			}
		}
		q.msgs = append(q.msgs, m)
	}
	represent := func(g *group) {
		first, oldest := g.queues[0], g.queues[0].msgs[0]
		enq := oldest.Enqueued
		for _, q := range g.queues[1:] {
			h := q.msgs[0]
			if s, f := c.Served[q.token], c.Served[first.token]; s < f || s == f && h.Seq < first.msgs[0].Seq {
				first = q
			}
			if h.Seq < oldest.Seq {
				oldest = h
			}
			if h.Enqueued.Before(enq) {
				enq = h.Enqueued
			}
		}
		g.rep = first.key
		g.rep.Seq, g.rep.Enqueued = oldest.Seq, enq
	}
	for _, g := range order {
		represent(g)
	}
	// resumedHead is the queue headed by the oldest resumed job, "" when none is.
	resumedHead := func() string {
		tok, seq := "", uint64(0)
		for t, s := range resume {
			if q := byToken[t]; q != nil && groupOf[t] != nil && len(q.msgs) > 0 && q.msgs[0].Seq == s && (tok == "" || s < seq) {
				tok, seq = t, s
			}
		}
		return tok
	}
	headsKept := false // heads below holds order's reps
	// join adds the held queues whose hold ended by at to the picks, going on to the
	// first hold's end when nothing else is left to run before it.
	join := func(at time.Time) time.Time {
		if len(order) == 0 {
			first := later[0].from
			for _, q := range later[1:] {
				if q.from.Before(first) {
					first = q.from
				}
			}
			if first.After(at) {
				at = first
			}
		}
		keep := later[:0]
		for _, q := range later {
			if q.from.After(at) {
				keep = append(keep, q)
				continue
			}
			c.Served[q.token] = joinedAt(picks)
			represent(attach(q))
			headsKept = false
		}
		later = keep
		return at
	}
	// heads is order's reps, kept in step from pick to pick (only the picked group's
	// changes, or it leaves), not copied whole for each of thousands of picks.
	heads := make([]head, 0, len(order))
	out := make([]planned, 0, len(msgs))
	at := free
	for len(order) > 0 || len(later) > 0 {
		if len(later) > 0 {
			at = join(at)
		}
		tok := resumedHead()
		switch {
		case tok != "":
			delete(resume, tok)
		case len(order) == 1:
			tok = order[0].rep.Token // plan of one head is that head
		default:
			if !headsKept {
				heads = heads[:0]
				for _, g := range order {
					heads = append(heads, g.rep)
				}
				headsKept = true
				sc.copied += len(heads)
			}
			c.Heads, c.Now = heads, at
			tok = sc.first(c)
		}
		q := byToken[tok]
		m := q.msgs[0]
		out = append(out, planned{Msg: m, Position: len(out) + 1, Start: at})

		r := q.key.Runner
		run, load := cost.estimate(m.Model)
		swap := !slices.Contains(c.Loaded, r)
		if swap {
			at = at.Add(load)
		}
		c.Loaded = withLoaded(c.Loaded, r)
		at = at.Add(run)
		if r == c.Current {
			c.Consecutive++
		} else {
			c.Current, c.Consecutive = r, 1
			if swap { // as the worker's begin: only a swap starts the streak's time
				c.StreakStart = out[len(out)-1].Start
			}
		}
		c.CurrentClass = q.key.Class
		picks++
		c.Served[tok] = turnAt(picks)
		c.ClassPicked[q.key.Class.Rank()] = out[len(out)-1].Start

		q.msgs = q.msgs[1:]
		// The group picked: plan picks a group's first queue, a resumed job may be in any.
		gi := slices.Index(order, groupOf[tok])
		g := order[gi]
		if len(q.msgs) == 0 {
			// The queue ran empty: its program's turn is forgotten (joinTurns).
			delete(c.Served, tok)
			g.queues = slices.DeleteFunc(g.queues, func(x *queue) bool { return x == q })
		}
		if len(g.queues) == 0 {
			order = slices.Delete(order, gi, gi+1)
			if headsKept {
				heads = slices.Delete(heads, gi, gi+1)
			}
			continue
		}
		represent(g)
		if headsKept {
			heads[gi] = g.rep
			sc.copied++
		}
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
