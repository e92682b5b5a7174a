package worker

import (
	"fmt"
	"testing"
	"time"
)

// A program cannot push another back by taking a new name for each job: a queue seen for
// the first time joins the back of the rotation, so the waiting program keeps getting
// every other pick (with a never-served queue going first it got one of 20).
func TestRotatingProgramNamesDoNotJump(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	w := &Worker{cfg: Config{MaxConsecutive: 8, MaxWait: time.Hour, serverNow: time.Now}, served: map[string]uint64{}}
	seq := uint64(1)
	victim := head{Token: "victim", Runner: "a", Seq: seq, Enqueued: now}
	var attacker []head
	victimRuns := 0
	const picks = 20
	for i := range picks {
		// The attacker keeps one job queued, each under a name never seen before.
		if len(attacker) == 0 {
			seq++
			attacker = append(attacker, head{Token: fmt.Sprintf("rot%d", i), Runner: "a", Seq: seq, Enqueued: now})
		}
		heads := append([]head{victim}, attacker...)
		w.joinTurns(heads, seq)
		w.mu.Lock()
		c := w.choiceLocked(heads, now)
		w.mu.Unlock()
		tok := plan(c)[0]
		w.took(tok)
		if tok == "victim" {
			victimRuns++
			seq++
			victim.Seq = seq // its next job
			continue
		}
		for j, h := range attacker {
			if h.Token == tok {
				attacker = append(attacker[:j], attacker[j+1:]...)
				break
			}
		}
	}
	if victimRuns < picks/2 {
		t.Fatalf("the waiting program ran %d of %d picks, want at least %d", victimRuns, picks, picks/2)
	}
}
