package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// topSnapshot is what `foreman top` shows at one moment.
type topSnapshot struct {
	Running *client.Job        `json:"running"`
	Loaded  []string           `json:"loaded"`
	Queued  []client.QueuedJob `json:"queued"`
	Total   int                `json:"total"`
	Recent  []client.Job       `json:"recent"`
	Paused  *client.Pause      `json:"paused,omitempty"`
	// Elsewhere are the jobs another foreman's worker runs (several Macs on one NATS).
	Elsewhere []client.ElsewhereJob `json:"running_elsewhere,omitempty"`
	// WaitingElsewhere counts the waiting jobs this foreman's worker leaves to other Macs.
	WaitingElsewhere int `json:"waiting_elsewhere,omitempty"`
	// OwnTargetDown is foreman's own Ollama while its polls fail and the worker is not
	// paused for it (a job runs, waiting on it).
	OwnTargetDown *client.QueueTarget `json:"own_target_down,omitempty"`
	// Now is foreman's time when it answered (client.Queue.Now), zero when not said.
	Now time.Time `json:"now,omitzero"`
}

// foremanNow is the time to take spans to foreman's times against (a job's start, an
// ETA): foreman's when it said it (GET /queue's now, told then), so that a host whose
// clock is off from foreman's (another machine's CLI) shows a job that just started as
// just started and an ETA a minute away as a minute away; local otherwise.
func foremanNow(q *client.Queue, local time.Time) time.Time {
	if q == nil || q.Now.IsZero() {
		return local
	}
	return q.Now.In(local.Location()) // shown as a local time, as the local clock's
}

// at is foremanNow for the snapshot: foreman's time when it answered, or local.
func (s *topSnapshot) at(local time.Time) time.Time {
	if s.Now.IsZero() {
		return local
	}
	return s.Now.In(local.Location())
}

// topRows caps the queue rows and recent jobs a frame lists.
const (
	topQueueRows  = 20
	topRecentRows = 10
)

func newTopCmd(e *env) *cobra.Command {
	var (
		f        *clientFlags
		once     bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch the running job, loaded models, the queue and recent jobs live (q quits)",
		Long: "top shows what foreman runs, what the target has loaded, the queue in the order foreman will\n" +
			"run it (position, ETA) and the jobs that finished last (wait and run times), refreshed in place.\n" +
			"Press q to quit. When stdout is not a terminal (or with --once or --json) it prints one snapshot.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if interval < 100*time.Millisecond {
				return fmt.Errorf("--interval: must be at least 100ms, got %s", interval)
			}
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			out := cmd.OutOrStdout()
			if once || f.json || !isTTY(out) {
				ctx, cancel := f.bounded(cmd)
				defer cancel()
				snap, err := fetchTop(ctx, c)
				if err != nil {
					return f.explain(e, err)
				}
				if f.json {
					return printJSON(out, snap)
				}
				return renderTop(out, snap, snap.at(e.clock()), c.ShownURL(), 0, 0)
			}
			return liveTop(cmd.Context(), e, out, c, f, interval)
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().Lookup("timeout").Usage = fmt.Sprintf("give up when foreman has not answered within this long (0: wait for ever); live, each refresh waits at most %s, or this when shorter", refreshTimeout)
	cmd.Flags().BoolVar(&once, "once", false, "print one snapshot and exit")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "time between refreshes")
	return cmd
}

// fetchTop reads the queue and the recent jobs.
func fetchTop(ctx context.Context, c *client.Client) (*topSnapshot, error) {
	q, err := c.Queue(ctx, topQueueRows)
	if err != nil {
		return nil, err
	}
	snap := &topSnapshot{Running: q.Running, Loaded: q.Loaded, Queued: q.Queued, Total: q.Total, Paused: q.Paused, Elsewhere: q.RunningElsewhere,
		OwnTargetDown: silentTarget(q), WaitingElsewhere: elsewhereCount(q), Now: q.Now}
	// The finished jobs by state: while a backlog lasts the newest jobs all wait.
	l, err := c.Jobs(ctx, client.JobFilter{States: []client.State{client.StateDone, client.StateFailed, client.StateCanceled}, Limit: topRecentRows})
	if err != nil {
		return nil, err
	}
	snap.Recent = l.Jobs
	return snap, nil
}

// renderTop writes one frame. width > 0 cuts lines to it and height > 0 fits the frame in
// that many lines (a terminal), so a frame never wraps or scrolls and the next one starts
// where this one did: the queue and the recent jobs list fewer rows.
func renderTop(w io.Writer, s *topSnapshot, now time.Time, url string, width, height int) error {
	text := topText(fitRows(s, now, url, height), now, url)
	if height > 0 {
		if lines := strings.SplitAfter(text, "\n"); len(lines) > height {
			text = strings.Join(lines[:height], "")
		}
	}
	if width > 0 {
		text = fitLines(text, width)
	}
	_, err := io.WriteString(w, text)
	return err
}

// fitRows is s with as many queue rows and recent jobs as fit in height lines together
// with the rest of the frame (height 0: all of them). The recent jobs get up to a third of
// the room, the queue the rest; a cut queue says how many more wait.
func fitRows(s *topSnapshot, now time.Time, url string, height int) *topSnapshot {
	if height <= 0 {
		return s
	}
	bare := *s
	bare.Queued, bare.Recent = nil, nil
	// The bare frame has every other line, "... and N more" included whenever a job waits.
	room := max(height-strings.Count(topText(&bare, now, url), "\n"), 0)
	recent := min(len(s.Recent), room/3)
	queued := min(len(s.Queued), room-recent)
	recent = min(len(s.Recent), room-queued)
	fit := *s
	fit.Queued, fit.Recent = s.Queued[:queued], s.Recent[:recent]
	return &fit
}

// topText is the text of one frame.
func topText(s *topSnapshot, now time.Time, url string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "foreman %s   %s\n\n", url, now.Format("15:04:05"))
	if r := s.Running; r != nil {
		since := r.CreatedAt
		if r.StartedAt != nil {
			since = *r.StartedAt
		}
		fmt.Fprintf(&b, "RUNNING  %s  %s  %s  %s  %s\n", termSafe(r.Model), programName(r.Program), termSafe(string(r.State)), topDuration(now.Sub(since)), termSafe(r.ID))
	} else {
		b.WriteString("RUNNING  -\n")
	}
	for _, j := range s.Elsewhere {
		since := j.CreatedAt
		if j.StartedAt != nil {
			since = *j.StartedAt
		}
		on := ""
		if j.Runner != "" || j.RunnerGone {
			on = "  on " + runnerText(j.Runner, false)
		}
		if j.RunnerGone {
			on += " (foreman gone)"
		}
		fmt.Fprintf(&b, "ELSEWHERE  %s  %s  %s  %s  %s%s\n", termSafe(j.Model), programName(j.Program), termSafe(string(j.State)), topDuration(now.Sub(since)), termSafe(j.JobID), on)
	}
	if p := s.Paused; p != nil {
		fmt.Fprintf(&b, "PAUSED   %s for %s%s: %s\n", pauseText(p), topDuration(now.Sub(p.Since)), restartText(p), termSafe(p.Error))
	}
	if t := s.OwnTargetDown; t != nil {
		fmt.Fprintf(&b, "OLLAMA   %s\n", silentText(t, now, topDuration))
	}
	loaded := "-"
	if len(s.Loaded) > 0 {
		loaded = strings.Join(termSafeAll(s.Loaded), ", ")
	}
	fmt.Fprintf(&b, "LOADED   %s\n\n", loaded)

	fmt.Fprintf(&b, "QUEUE (%d)", s.Total)
	if s.WaitingElsewhere > 0 {
		fmt.Fprintf(&b, "  and %d waiting for another Mac", s.WaitingElsewhere)
	}
	b.WriteString("\n")
	tw := newColumns(&b, 2)
	fmt.Fprintln(tw, "POS\tSTATE\tETA\tMODEL\tPRIORITY\tPROGRAM\tKIND\tWAITING\tID")
	for _, j := range s.Queued {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.QueuePosition, waitState(j), topETA(now, j.ETA), termSafe(j.Model), termSafe(j.Priority),
			programName(j.Program), termSafe(string(j.Kind)), topDuration(now.Sub(j.CreatedAt)), termSafe(j.JobID))
	}
	_ = tw.Flush()
	if more := s.Total - len(s.Queued); more > 0 {
		fmt.Fprintf(&b, "... and %d more\n", more)
	}

	b.WriteString("\nRECENT\n")
	tw = newColumns(&b, 2)
	fmt.Fprintln(tw, "FINISHED\tSTATE\tMODEL\tPROGRAM\tWAIT\tRUN\tID")
	for _, j := range s.Recent {
		finished, wait, run := "-", "-", "-"
		if j.FinishedAt != nil {
			finished = j.FinishedAt.Local().Format("15:04:05")
		}
		if j.StartedAt != nil {
			wait = topDuration(j.StartedAt.Sub(j.CreatedAt))
			if j.FinishedAt != nil {
				run = topDuration(j.FinishedAt.Sub(*j.StartedAt))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", finished, termSafe(string(j.State)), termSafe(j.Model), programName(j.Program), wait, run, termSafe(j.ID))
	}
	_ = tw.Flush()
	return b.String()
}

func programName(p string) string {
	if p == "" {
		return "(anonymous)"
	}
	return termSafe(p)
}

// topDuration is a compact duration: 850ms, 12s, 3m05s, 1h02m.
func topDuration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// topETA is when a queued job should start: "in 12s (15:04:05)", "-" when unknown.
func topETA(now, eta time.Time) string {
	if eta.IsZero() {
		return "-"
	}
	return fmt.Sprintf("in %s (%s)", topDuration(eta.Sub(now)), eta.Local().Format("15:04:05"))
}

// isTTY reports whether w is a terminal (stdout, stderr).
func isTTY(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
