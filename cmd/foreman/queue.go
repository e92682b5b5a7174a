package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newQueueCmd(e *env) *cobra.Command {
	var (
		f     *clientFlags
		limit int
	)
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Show the running job and the waiting jobs in the order foreman will run them",
		Long: "Show the running job, the models loaded and the waiting jobs in the order foreman\n" +
			"expects to run them, with each job's position and expected start (ETA).\n" +
			"--json prints the GET /queue body as foreman sent it (characters that would act on a\n" +
			"terminal written as \\u escapes, which stand for the same JSON).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := limitSet(cmd, limit); err != nil {
				return err
			}
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			q, err := c.Queue(ctx, limit)
			if err != nil {
				return f.explain(e, err)
			}
			out := cmd.OutOrStdout()
			if f.json {
				raw := strings.TrimRight(string(termJSON(q.Raw)), "\n")
				_, err := fmt.Fprintln(out, raw)
				return err
			}
			now := foremanNow(q, e.clock())
			running := "none"
			if j := q.Running; j != nil {
				running = fmt.Sprintf("%s %s (%s", termSafe(j.ID), termSafe(j.Model), termSafe(string(j.State)))
				if j.StartedAt != nil {
					running += ", " + shortAge(now.Sub(*j.StartedAt))
				}
				running += ")"
			}
			loaded := strings.Join(termSafeAll(q.Loaded), ", ")
			if loaded == "" {
				loaded = "none"
			}
			waiting := strconv.Itoa(q.Total)
			if n := elsewhereCount(q); n > 0 {
				waiting += fmt.Sprintf(" (and %d for another Mac)", n)
			}
			fmt.Fprintf(out, "Running: %s\nLoaded:  %s\nWaiting: %s\n", running, loaded, waiting)
			for _, j := range q.RunningElsewhere {
				age := ""
				if j.StartedAt != nil {
					age = ", " + shortAge(now.Sub(*j.StartedAt))
				}
				on := ""
				if j.Runner != "" || j.RunnerGone {
					on = ", on " + runnerText(j.Runner, j.RunnerGone)
				}
				fmt.Fprintf(out, "On another Mac: %s %s (%s%s%s)\n", termSafe(j.JobID), termSafe(j.Model), termSafe(string(j.State)), age, on)
			}
			if p := q.Paused; p != nil {
				fmt.Fprintf(out, "Paused:  %s for %s%s: %s\n", pauseText(p), shortAge(now.Sub(p.Since)), restartText(p), termSafe(p.Error))
			}
			if t := silentTarget(q); t != nil {
				fmt.Fprintf(out, "Ollama:  %s\n", silentText(t, now, shortAge))
			}
			fmt.Fprintln(out)
			tw := newColumns(out, 3)
			fmt.Fprintln(tw, "POS\tID\tMODEL\tKIND\tPRIORITY\tPROGRAM\tAGE\tETA\tSTATE")
			for _, j := range q.Queued {
				eta := "now"
				if d := j.ETA.Sub(now); d >= time.Second {
					eta = "in " + shortAge(d)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.QueuePosition, termSafe(j.JobID), termSafe(j.Model), termSafe(string(j.Kind)), termSafe(j.Priority), programName(j.Program),
					shortAge(now.Sub(j.CreatedAt)), eta, waitState(j))
			}
			for _, j := range q.WaitingElsewhere {
				fmt.Fprintf(tw, "-\t%s\t%s\t%s\t%s\t%s\t%s\t-\t%s\n", termSafe(j.JobID), termSafe(j.Model), termSafe(string(j.Kind)), termSafe(j.Priority), programName(j.Program),
					shortAge(now.Sub(j.CreatedAt)), waitState(j))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, j := range append(q.Queued[:len(q.Queued):len(q.Queued)], q.WaitingElsewhere...) {
				switch {
				case j.State != client.StateRetrying:
				case j.Attempts == 0: // not counted: Ollama busy (ADR-0086), a stop's hand-back
					fmt.Fprintf(out, "Retrying: %s: %s\n", termSafe(j.JobID), termSafe(j.Error))
				default:
					fmt.Fprintf(out, "Retrying: %s: attempt %d failed: %s\n", termSafe(j.JobID), j.Attempts, termSafe(j.Error))
				}
			}
			if more := q.Total - len(q.Queued); more > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d more waiting; see them with --limit %d\n", more, q.Total)
			}
			return nil
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().IntVar(&limit, "limit", 0, "waiting jobs to list (server default 100)")
	return cmd
}

// waitState is a waiting job's state for a table: "retrying (2)" for one backing off
// after its second attempt ("retrying" after one not counted: Ollama busy, ADR-0086),
// "waiting" for one waiting its first turn, either followed by
// ", elsewhere" while the worker leaves the job to another Mac (ADR-0066), or by
// ", another Mac" for one it leaves to the others for good (Queue.WaitingElsewhere: no
// position).
func waitState(j client.QueuedJob) string {
	s := "waiting"
	if j.State == client.StateRetrying {
		s = "retrying"
		if j.Attempts > 0 {
			s = fmt.Sprintf("retrying (%d)", j.Attempts)
		}
	}
	switch {
	case j.LeftElsewhere:
		s += ", elsewhere"
	case j.QueuePosition == 0:
		s += ", another Mac"
	}
	return s
}

// elsewhereCount is how many jobs wait for another Mac than this foreman's, shown or
// not: the whole queue (Depth) less this foreman's worker's jobs (Total).
func elsewhereCount(q *client.Queue) int {
	n := -q.Total
	for _, d := range q.Depth {
		n += d
	}
	return max(n, 0)
}

// pauseText says why a worker pauses in words, fit for a terminal.
func pauseText(p *client.Pause) string {
	switch {
	case p.RestartNeeded:
		return "job store cannot write"
	case p.Reason == client.PauseTargetUnreachable:
		return "Ollama unreachable"
	case p.Reason == client.PauseStoreRefusesWrites:
		return "job store refuses writes"
	case p.Reason == client.PauseTargetBusy:
		return "Ollama busy"
	}
	return termSafe(p.Reason)
}

// restartText tells a pause that ends only with a restart of foreman: it does not end
// by itself, however long one waits.
func restartText(p *client.Pause) string {
	switch {
	case p.RestartNeeded && strings.Contains(p.Error, "read-only file system"):
		// The fault is the file system's, gone read-only after a disk error: room would
		// not end it (the pause has only the store's words, from the server's OS).
		return "; foreman needs a restart (once its disk is fixed: its data directory went read-only)"
	case p.RestartNeeded:
		return "; foreman needs a restart (once its disk has room)"
	}
	return ""
}

// silentTarget is foreman's own Ollama when its polls fail and the worker is not paused
// for it already (a job runs, and waits for an answer that may never come); else nil.
func silentTarget(q *client.Queue) *client.QueueTarget {
	t := q.OwnTarget()
	if t == nil || t.Reachable || t.DownSince == nil && t.Error == "" {
		return nil
	}
	if q.Paused != nil && q.Paused.Reason == client.PauseTargetUnreachable {
		return nil
	}
	return t
}

// silentText says how long foreman's Ollama has left its polls unanswered, and why; age
// formats the duration.
func silentText(t *client.QueueTarget, now time.Time, age func(time.Duration) string) string {
	what := "its last poll failed"
	if t.DownSince != nil {
		what = "no answer to foreman's polls for " + age(now.Sub(*t.DownSince))
	}
	if t.Error != "" {
		what += ": " + termSafe(t.Error)
	}
	return what
}
