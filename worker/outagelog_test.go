package worker_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// countLines counts the lines of logs with all of parts.
func countLines(logs string, parts ...string) int {
	n := 0
	for l := range strings.Lines(logs) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// During a NATS outage every pick of the next job fails, retried within the second: the
// worker warns of each failure once (the same again at debug, counted in the next warning
// 10 s on), and says once that it picks again when NATS is back.
func TestNATSOutageWarnsOncePerWindow(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	o := brokertest.NewOutage(t, nil)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tb.startOn(t, o.Store, worker.Config{Logger: log, IdlePoll: 5 * time.Millisecond})
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	// A job done: the worker is past its start-up sweep, in its loop of picks.
	ctx := ctxT(t)
	j, err := o.Store.Submit(ctx, &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}, []byte(chatBody("tiny-a", 1)))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the job done", func() bool {
		got, _, err := o.Store.Get(ctx, j.ID)
		return err == nil && got.State == broker.StateDone
	})

	o.Cut(t)
	eventually(t, 20*time.Second, "five failed picks", func() bool {
		return countLines(logs.String(), `msg="select next job"`) >= 5
	})
	// One warning for each failure: a pick under way as the connection went ends on its
	// timeout, the later ones at once on the connection cut off.
	warned := map[string]bool{}
	for l := range strings.Lines(logs.String()) {
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, `msg="select next job"`) {
			continue
		}
		_, failure, _ := strings.Cut(l, " err=")
		if warned[failure] {
			t.Fatalf("failure warned of twice within 10 s: %s", failure)
		}
		warned[failure] = true
	}
	if countLines(logs.String(), "level=DEBUG", `msg="select next job"`) == 0 {
		t.Fatal("no failed pick left to debug")
	}
	o.Heal(t)
	eventually(t, 20*time.Second, "the picks working again", func() bool {
		return countLines(logs.String(), "level=INFO", `msg="select next job: works again"`) == 1
	})
}

// After a NATS outage the worker is back to picking jobs within a few seconds of NATS,
// whatever its back-off grew to: a pick's failures wait at most maxPickRetry. With its
// retry back-off set to an hour, the first failed pick waited that hour.
func TestPicksResumeSoonAfterANATSOutage(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	o := brokertest.NewOutage(t, nil)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tb.startOn(t, o.Store, worker.Config{Logger: log, IdlePoll: 5 * time.Millisecond, RetryDelay: time.Hour})
	ctx := ctxT(t)
	submit := func() string {
		j, err := o.Store.Submit(ctx, &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}, []byte(chatBody("tiny-a", 1)))
		if err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	done := func(id string) func() bool {
		return func() bool {
			got, _, err := o.Store.Get(ctx, id)
			return err == nil && got.State == broker.StateDone
		}
	}
	eventually(t, 20*time.Second, "the first job done", done(submit()))
	o.Cut(t)
	eventually(t, 20*time.Second, "a failed pick", func() bool {
		return countLines(logs.String(), `msg="select next job"`) >= 1
	})
	o.Heal(t)
	eventually(t, 30*time.Second, "a job submitted after the outage done", done(submit()))
}

// The look for jobs that waited a job TTL, and the read of the job TTL in force beside
// it, fail at each turn of their loop during a NATS outage: each is warned of once (the
// repeats at debug), and once NATS is back each says once that it works again. They
// warned at every turn, and never told of the outage's end.
func TestExpiryLooksTellOfAnOutagesEnd(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	o := brokertest.NewOutage(t, func(c *broker.Config) { c.JobTTL = 2 * time.Second }) // a look every 250 ms
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tb.startOn(t, o.Store, worker.Config{Logger: log, IdlePoll: 5 * time.Millisecond})
	defer func() {
		if t.Failed() {
			t.Log(logs.String())
		}
	}()
	const ttlRead, look = `msg="read the job TTL in force"`, `msg="look for jobs that waited a job TTL"`
	o.Cut(t)
	eventually(t, 20*time.Second, "three failed looks of each kind", func() bool {
		l := logs.String()
		return countLines(l, ttlRead) >= 3 && countLines(l, look) >= 3
	})
	o.Heal(t)
	eventually(t, 20*time.Second, "both looks working again", func() bool {
		l := logs.String()
		return countLines(l, "level=INFO", ttlRead[:len(ttlRead)-1]+`: works again"`) == 1 &&
			countLines(l, "level=INFO", look[:len(look)-1]+`: works again"`) == 1
	})
	l := logs.String()
	for _, msg := range []string{ttlRead, look} {
		// Within the outage's few seconds, one warning per distinct failure: the
		// connection's loss and its refusals while cut off.
		if n := countLines(l, "level=WARN", msg); n > 2 {
			t.Errorf("%d warnings of %s, want at most 2 in one outage", n, msg)
		}
		if countLines(l, "level=DEBUG", msg) == 0 {
			t.Errorf("no repeat of %s left to debug", msg)
		}
	}
}
