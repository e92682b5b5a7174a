package worker

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// head is the oldest pending job of one queue (one queue key: model, load options, class
// and program).
type head struct {
	Token    string // queue key
	Seq      uint64
	Enqueued time.Time
	JobID    string // the job of message Seq; "" in the queue view's simulation
	// Runner is the model runner the queue's jobs need (broker.QueueKey.Runner); "" means
	// Token. Jobs of one runner run without a reload.
	Runner string
	// Class is the queue's priority class; "" is normal.
	Class broker.Priority
}

func (h head) runner() string {
	if h.Runner == "" {
		return h.Token
	}
	return h.Runner
}

// choice is everything the selection depends on; plan is a pure function of it.
type choice struct {
	// Loaded lists the runners the target has loaded, most trusted first (from /api/ps
	// when it is fresher than our last job, else the runner we ran last). A job for any of
	// them costs no reload.
	Loaded []string
	// Current is the runner of the jobs run most recently, Consecutive how many in a row,
	// CurrentClass the class of the last of them: the streak is that class's.
	Current      string
	Consecutive  int
	CurrentClass broker.Priority
	// StreakStart is when the streak began: the time (on Now's clock) of the pick that
	// made Current current, the one Consecutive counted as 1, when that pick swapped its
	// runner in; a runner made current that the target held already (several models
	// resident) goes on with the start before (or two resident runners taking turns would
	// each begin it afresh, and a third runner's job would wait for good). Another
	// runner's job counts as passed over only from the later of its enqueue time and
	// this: a backlog older than the streak does not break it at once. Zero counts as a
	// streak begun long ago (a fresh worker's, until its first swap).
	StreakStart time.Time
	// Heads has one entry per queue with pending jobs.
	Heads []head
	// Served is when each queue last had its turn (turnAt of the pick count), or when it
	// joined the rotation (joinedAt): the queues of one runner and class take turns, the
	// one served longest ago first.
	Served map[string]uint64
	// ClassPicked is when each class (by Priority.Rank) last had a pick, zero for never:
	// an aged class goes before the others at most once per MaxWait.
	ClassPicked [3]time.Time
	// Resume is, by queue, the message of a job cut short by a previous process of this
	// foreman (resumed): while it heads its queue, it goes before everything else.
	Resume map[string]uint64
	// Now is the NATS server's time (Store.ServerNow), the clock of Heads' Enqueued and
	// of ClassPicked: a host clock off from the server's, or stepped, would make every
	// head late (drain-by-model gone) or none.
	Now            time.Time
	MaxConsecutive int
	MaxWait        time.Duration
	// RunElsewhere are the runners another Mac runs a job of now (on a shared NATS): the
	// consecutive cap does not yield to them, as they do not starve. Nil for none.
	RunElsewhere map[string]bool
}

// turnAt is the Served mark of a queue that had the picks-th pick.
func turnAt(picks uint64) uint64 { return 2 * picks }

// joinedAt is the Served mark of a queue seen first (or again after it ran empty) after
// picks picks: it joins the back of the rotation, behind every queue served before the
// last pick, so a program cannot jump the others by taking a new name; yet it goes before
// the queue served last, so a program's few jobs run among the next few, not after a flood.
func joinedAt(picks uint64) uint64 { return max(2*picks, 1) - 1 }

// plan orders the queues to fetch from; the caller takes the first that yields a job (a
// queue whose jobs all wait out a retry back-off yields none).
//
//  1. Classes: every high queue comes before every normal one, and normal before low,
//     except that a class that is starved (its oldest job waited longer than MaxWait and
//     it had no pick for MaxWait) goes before the classes that are not: aging beats
//     class, so low never starves, yet an aged class gets one pick per MaxWait and then
//     yields, so an old backlog does not hold up a fresh high job until it is old too.
//  2. Within a class, runners (model and load options) as before classes: the loaded
//     runners first (no swap), then every runner by the age of its oldest job. The
//     starvation bound overrides the loaded preference: in the class of the streak
//     (CurrentClass), once Current ran MaxConsecutive jobs in a row while another runner
//     waits in the class that no other Mac runs now (RunElsewhere: that Mac's drain
//     serves it), or another runner's job of the class has been passed over for longer
//     than MaxWait (waited longer than MaxWait since the streak began, StreakStart: a
//     job older than the streak counts from its start, so an old backlog drains in
//     streaks of up to MaxConsecutive jobs or MaxWait each rather than swapping at every
//     pick), the other runners go first by age, and Current comes last (it still runs
//     if they have nothing ready). In another class Current has no streak to break, and a
//     job of it that waited longer than MaxWait must not go last (a high flood keeping
//     Current would starve the class's job of it for good): once any job of such a
//     class has waited longer than MaxWait, its runners go by age alone.
//  3. Within a runner and class, the programs' queues take turns: the one served longest
//     ago first (a queue that joins the rotation counts as served just before the last
//     pick), ties by the age of their oldest job. A program's own jobs stay in order.
//
// Before all of these, a job cut short by a previous process of this foreman (Resume)
// goes first while it heads its queue, the oldest first: it had its turn already
// (ADR-0044).
//
// With one class and one program this is exactly the drain-by-model of ADR-0015.
func plan(c choice) []string {
	var sc planScratch
	ps := sc.places(c)
	// Sorted by index, compared key by key up to the first that differs: over hundreds of
	// queues, moving the places themselves and evaluating every key (cmp.Or) cost most of
	// a pick's time.
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int { return comparePlaces(&ps[i], &ps[j]) })
	out := make([]string, len(ps))
	for i, k := range order {
		out[i] = ps[k].token
	}
	return out
}

// first is plan(c)[0] ("" for no heads): the least place, found without ordering the
// others. The places of distinct heads never compare equal (their Seq differ), so it is
// the very queue plan puts first. The queue view calls it once per job it places, with
// one scratch for all of them: it allocates nothing once the scratch has grown.
func (sc *planScratch) first(c choice) string {
	ps := sc.places(c)
	if len(ps) == 0 {
		return ""
	}
	best := 0
	for i := 1; i < len(ps); i++ {
		if comparePlaces(&ps[i], &ps[best]) < 0 {
			best = i
		}
	}
	return ps[best].token
}

// place is a queue's place in plan's order: class, then its runner's place in the class,
// then its turn.
type place struct {
	class, group int
	age          uint64 // the runner's oldest job in the class
	runner       string
	served, seq  uint64
	token        string
}

// comparePlaces orders places as plan does, key by key up to the first that differs.
func comparePlaces(a, b *place) int {
	switch {
	case a.class != b.class:
		return cmp.Compare(a.class, b.class)
	case a.group != b.group:
		return cmp.Compare(a.group, b.group)
	case a.age != b.age:
		return cmp.Compare(a.age, b.age)
	case a.runner != b.runner:
		return strings.Compare(a.runner, b.runner)
	case a.served != b.served:
		return cmp.Compare(a.served, b.served)
	}
	return cmp.Compare(a.seq, b.seq)
}

// loadedScan is the most loaded runners places finds by comparing names; more are put
// in a map.
const loadedScan = 8

// runnerClass is a runner within a class (by Priority.Rank).
type runnerClass struct {
	runner string
	rank   int
}

// planScratch holds what places builds, kept from one call to the next by a caller that
// plans many times (the queue view's simulation); the zero value is ready.
type planScratch struct {
	oldest map[runnerClass]uint64
	loaded map[string]int
	ps     []place
	// groupHeads is set by a caller whose heads each stand for a runner and class of
	// their own (the queue view's simulation, order: a group's first queue with its oldest
	// job): a head's Seq is then its runner's oldest in the class, and two heads never
	// tie before their turns are compared, so places looks up neither in a map. Over a
	// deep queue of many models that hashing was most of the view: each of 50,000
	// simulated picks placed all 120 heads (TestOrderLooksUpNoMapPerHead).
	groupHeads bool
	// lookups counts the map look-ups places made for its heads, copied the heads order
	// copied into the plan's input (tests).
	lookups, copied int
}

// places is each of c.Heads' place in plan's order (in sc's slice, valid until the next
// call).
func (sc *planScratch) places(c choice) []place {
	type classInfo struct {
		// others: a runner besides Current waits that no other Mac runs now
		overdue, late, others, othersOverdue bool
	}
	var classes [3]classInfo
	streak := c.CurrentClass.Rank()
	if sc.oldest == nil {
		sc.oldest = make(map[runnerClass]uint64, len(c.Heads))
	}
	oldest := sc.oldest
	clear(oldest)
	lateBefore := c.Now.Add(-c.MaxWait) // a head enqueued before it waited longer than MaxWait
	// The streak is older than MaxWait: another runner's late job was passed over for
	// longer than MaxWait (a job older than the streak was passed over only since it began).
	// A start after Now is the server's clock stepped back since: it counts as long ago,
	// the jobs' own ages, or the streak would hold for as long as the step.
	streakOld := c.StreakStart.Before(lateBefore) || c.StreakStart.After(c.Now)
	for _, h := range c.Heads {
		k, r := h.Class.Rank(), h.runner()
		late := c.MaxWait > 0 && h.Enqueued.Before(lateBefore)
		classes[k].overdue = classes[k].overdue || late
		classes[k].late = classes[k].late || late
		if k == streak && c.Current != "" && r != c.Current {
			classes[k].others = classes[k].others || c.RunElsewhere == nil || !c.RunElsewhere[r]
			classes[k].othersOverdue = classes[k].othersOverdue || late && streakOld
		}
		if sc.groupHeads {
			continue // each head is its runner's oldest in its class
		}
		sc.lookups++
		if o, ok := oldest[runnerClass{r, k}]; !ok || h.Seq < o {
			oldest[runnerClass{r, k}] = h.Seq
		}
	}
	// Aging beats class: a starved class goes before those that are not. Starvation is the
	// class not being served, not its jobs being old: in a deep old backlog every next
	// head is old too.
	var classPos [3]int
	for k := range classes {
		classPos[k] = k
		if p := c.ClassPicked[k]; !p.IsZero() && c.Now.Sub(p) <= c.MaxWait {
			classes[k].overdue = false
		}
		if !classes[k].overdue {
			classPos[k] += 3
		}
	}
	capped := c.MaxConsecutive > 0 && c.Consecutive >= c.MaxConsecutive
	if sc.loaded == nil {
		sc.loaded = make(map[string]int, len(c.Loaded))
	}
	loaded := sc.loaded
	clear(loaded)
	// A few runners loaded (one per model the target holds) are found by comparing
	// names, no hashing a head.
	byMap := len(c.Loaded) > loadedScan
	if byMap {
		for i, r := range c.Loaded {
			if _, dup := loaded[r]; !dup {
				loaded[r] = i
			}
		}
	}
	ps := slices.Grow(sc.ps[:0], len(c.Heads))[:len(c.Heads)]
	sc.ps = ps
	for i, h := range c.Heads {
		k, r := h.Class.Rank(), h.runner()
		p := place{class: classPos[k], age: h.Seq, runner: r, seq: h.Seq, token: h.Token}
		if !sc.groupHeads {
			sc.lookups += 2
			p.age, p.served = oldest[runnerClass{r, k}], c.Served[h.Token]
		}
		switch ci := classes[k]; {
		case ci.others && capped || ci.othersOverdue: // the starvation bound: Current last
			if r == c.Current {
				p.group = 1
			}
		case k != streak && ci.late: // no streak here, a late job: by age alone
		default: // drain: the loaded runners first, in order, then by age
			i := -1
			if byMap {
				sc.lookups++
				if j, ok := loaded[r]; ok {
					i = j
				}
			} else {
				i = slices.Index(c.Loaded, r)
			}
			if i >= 0 {
				p.group, p.age = 0, uint64(i)
			} else {
				p.group = 1
			}
		}
		if c.Resume != nil {
			sc.lookups++
			if s, ok := c.Resume[h.Token]; ok && s == h.Seq {
				p.class, p.group, p.age = -1, 0, h.Seq // before every class, by age
			}
		}
		ps[i] = p
	}
	return ps
}
