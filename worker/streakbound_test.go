package worker

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The bound the README's Scheduling promises, checked as an invariant rather than
// against a copy of the rule: in one class and one program, the oldest waiting job runs
// at the first pick after it had been the oldest, and its runner had not been current,
// for longer than MaxWait. Random workloads over four models on a target holding one to
// three of them (the least recently used evicted), among them two clients that each
// queue their next job while their last one runs, on models the target holds: the
// worker's own transitions (took, begin: the consecutive count, the streak's start) and
// plan pick, the test only plays the target and the clock. At a random pick the arrivals
// stop, and the queue view's order made then must be the picks that follow.
func TestTheOldestJobWaitsAtMostMaxWaitUnderRandomWorkloads(t *testing.T) {
	t.Parallel()
	models := []string{"tiny-a", "tiny-b", "tiny-c", "tiny-d"}
	for seed := range 400 {
		rng := rand.New(rand.NewPCG(uint64(seed), 0x57e4))
		now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
		w := &Worker{cfg: Config{serverNow: func() time.Time { return now }, learnedMax: 8, MaxConsecutive: 1 + rng.IntN(8),
			MaxWait: time.Duration(5+rng.IntN(60)) * time.Second}, served: map[string]uint64{}, runnerOpts: map[string]string{}}
		cost := fixedCosts{}
		modelOf := map[string]string{} // by runner
		for _, m := range models {
			modelOf[runnerKey(t, m)] = m
			cost[m] = [2]time.Duration{time.Duration(1+rng.IntN(20)) * time.Second, time.Duration(rng.IntN(10)) * time.Second}
		}
		order := slices.Clone(models)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		var loaded []string // the target's resident runners, most recently used first
		for _, m := range order[:1+rng.IntN(3)] {
			loaded = append(loaded, runnerKey(t, m))
		}
		clients := rng.IntN(2) == 0 // two clients, each queueing its next job as its last runs
		stopAt := rng.IntN(120)     // from this pick on nothing arrives
		var waiting []broker.QueuedMessage
		var seq uint64
		var log []string
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s\n  %s", seed, fmt.Sprintf(format, args...), strings.Join(log, "\n  "))
		}
		submit := func(m string) {
			seq++
			waiting = append(waiting, broker.QueuedMessage{Token: queueKey(t, m, "", ""), Seq: seq, JobID: fmt.Sprint("j", seq), Model: m, Enqueued: now})
			log = append(log, fmt.Sprintf("%v submit j%d (%s)", now.Format("15:04:05"), seq, m))
		}
		var oldestSince time.Time        // when waiting[0] became the oldest waiting job
		leftAt := map[string]time.Time{} // when each runner last stopped being current
		var predicted []planned
		for pick := 0; pick < 150; pick++ {
			if pick < stopAt {
				for range rng.IntN(3) {
					submit(models[rng.IntN(len(models))])
				}
			}
			if len(waiting) == 0 {
				now = now.Add(time.Second)
				continue
			}
			if oldestSince.IsZero() {
				oldestSince = waiting[0].Enqueued
			}
			w.mu.Lock()
			var heads []head
			for _, m := range waiting {
				if !slices.ContainsFunc(heads, func(h head) bool { return h.Token == m.Token }) {
					heads = append(heads, queueHead(m.Token, m))
				}
			}
			c := w.choiceLocked(heads, now)
			w.mu.Unlock()
			c.Loaded = slices.Clone(loaded)
			if pick == stopAt {
				predicted = orderWith(&planScratch{groupHeads: true}, c, w.picks, slices.Clone(waiting), now, cost, nil)
			}
			tok := plan(c)[0]
			oldest := waiting[0]
			r := runnerOf(tok)
			// (A job of the current runner is the streak's own: once the streak is over it
			// goes last like the rest of it, and is counted from then.)
			if from := later(oldestSince, leftAt[runnerOf(oldest.Token)]); now.Sub(from) > c.MaxWait && r != runnerOf(oldest.Token) && c.Current != runnerOf(oldest.Token) {
				fail("%v: picked %s; the oldest job %s (%s) waited since %v, more than MaxWait %v, and goes on waiting",
					now.Format("15:04:05"), r, oldest.JobID, oldest.Model, from.Format("15:04:05"), c.MaxWait)
			}
			i := slices.IndexFunc(waiting, func(m broker.QueuedMessage) bool { return m.Token == tok })
			m := waiting[i]
			waiting = slices.Delete(waiting, i, i+1)
			if i == 0 {
				oldestSince = now
				if len(waiting) == 0 {
					oldestSince = time.Time{}
				}
			}
			if pick >= stopAt && predicted != nil {
				if k := pick - stopAt; k >= len(predicted) || predicted[k].Msg.Seq != m.Seq || !predicted[k].Start.Equal(now) {
					fail("pick %d after the arrivals stopped ran j%d at %v; the queue view had predicted %v", k, m.Seq, now.Format("15:04:05"), predicted)
				}
			}
			if r != w.current && w.current != "" {
				leftAt[w.current] = now
			}
			swap := !slices.Contains(loaded, r)
			w.took(tok)
			w.begin(tok, swap, func(error) {})
			w.end()
			log = append(log, fmt.Sprintf("%v run j%d (%s) swap=%v consec=%d streak from %v", now.Format("15:04:05"), m.Seq, m.Model, swap, w.consec, w.streakAt.Format("15:04:05")))
			loaded = withLoaded(loaded, r)
			run, load := cost.estimate(m.Model)
			if swap {
				now = now.Add(load)
			}
			if clients && pick < stopAt && len(loaded) > 1 {
				// The client of the other resident model queues its next job.
				submit(modelOf[loaded[1]])
			}
			now = now.Add(run)
		}
	}
}
