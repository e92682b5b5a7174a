package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newJobsCmd(e *env) *cobra.Command {
	list := newJobsListCmd(e, "jobs")
	list.Short = "List, inspect, cancel and watch async jobs (default: list)"
	list.AddCommand(newJobsListCmd(e, "list"), newJobsGetCmd(e), newJobsCancelCmd(e), newJobsWatchCmd(e))
	return list
}

func newJobsListCmd(e *env, use string) *cobra.Command {
	var (
		f      *clientFlags
		filter client.JobFilter
		state  string
	)
	cmd := &cobra.Command{
		Use:   use,
		Short: "List jobs, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := limitSet(cmd, filter.Limit); err != nil {
				return err
			}
			filter.State = client.State(state)
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			l, err := c.Jobs(ctx, filter)
			if err != nil {
				return f.explain(e, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), l)
			}
			now := e.clock()
			if !l.Now.IsZero() { // ages on foreman's clock, not this host's (which may be off)
				now = l.Now
			}
			tw := newColumns(cmd.OutOrStdout(), 3)
			fmt.Fprintln(tw, "ID\tMODEL\tSTATE\tAGE\tATTEMPTS")
			for _, j := range l.Jobs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", termSafe(j.ID), termSafe(j.Model), termSafe(string(j.State)), shortAge(now.Sub(j.CreatedAt)), j.Attempts)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if l.NextCursor != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: --cursor %s\n", termSafe(l.NextCursor))
			}
			return nil
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	fs := cmd.Flags()
	fs.StringVar(&state, "state", "", "only jobs in this state, or in any of several: done,failed,canceled")
	fs.StringVarP(&filter.Model, "model", "m", "", "only jobs of this model")
	fs.StringVar(&filter.Program, "program", "", "only jobs of this program")
	fs.IntVar(&filter.Limit, "limit", 0, "jobs per page (server default 50)")
	fs.StringVar(&filter.Cursor, "cursor", "", "continue a listing")
	return cmd
}

func newJobsGetCmd(e *env) *cobra.Command {
	var f *clientFlags
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show one job",
		Args:  cobra.MatchAll(jobIDCount(1), jobIDArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			j, err := c.Job(ctx, args[0])
			if err != nil {
				return f.explain(e, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), j)
			}
			now := e.clock()
			if !j.Now.IsZero() { // ages on foreman's clock (its answer's Date), as `jobs` takes them
				now = j.Now
			}
			return printJob(cmd.OutOrStdout(), j, now)
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	return cmd
}

// printJob shows a job as label: value lines, then its result text.
func printJob(w io.Writer, j *client.Job, now time.Time) error {
	tw := newColumns(w, 1)
	at := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339) + " (" + humanTime(now, *t, "") + ")"
	}
	fmt.Fprintf(tw, "ID:\t%s\n", termSafe(j.ID))
	fmt.Fprintf(tw, "Kind:\t%s\n", termSafe(string(j.Kind)))
	fmt.Fprintf(tw, "Model:\t%s\n", termSafe(j.Model))
	fmt.Fprintf(tw, "State:\t%s\n", termSafe(string(j.State)))
	if j.Priority != "" { // a foreman from before priorities sends none
		fmt.Fprintf(tw, "Priority:\t%s\n", termSafe(j.Priority))
	}
	fmt.Fprintf(tw, "Program:\t%s\n", programName(j.Program))
	fmt.Fprintf(tw, "Attempts:\t%d\n", j.Attempts)
	if j.Runner != "" || j.RunnerGone {
		fmt.Fprintf(tw, "Runner:\t%s\n", runnerText(j.Runner, j.RunnerGone))
	}
	fmt.Fprintf(tw, "Created:\t%s\n", at(&j.CreatedAt))
	fmt.Fprintf(tw, "Started:\t%s\n", at(j.StartedAt))
	fmt.Fprintf(tw, "Finished:\t%s\n", at(j.FinishedAt))
	if j.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", termSafe(j.Error))
	}
	for i, a := range j.Artifacts {
		label := ""
		if i == 0 {
			label = "Artifacts:"
		}
		fmt.Fprintf(tw, "%s\t%s (%s, %s)\n", label, termSafe(a.Name), termSafe(a.ContentType), humanBytes(a.Size))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(j.Result) > 0 {
		text := (&client.Result{Body: j.Result}).Text()
		if text == "" {
			text = compactJSON(j.Result)
		}
		_, err := fmt.Fprintf(w, "\n%s\n", termText(text))
		return err
	}
	return nil
}

// runnerText names the Mac that runs a job, and says so when its foreman is gone.
func runnerText(runner string, gone bool) string {
	name := termSafe(runner)
	if name == "" {
		name = "an unnamed Mac" // a worker embedded without a target name
	}
	if !gone {
		return name
	}
	return name + " (its foreman is gone: the job runs again once its ack wait ends)"
}

func compactJSON(raw json.RawMessage) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	var v any
	if json.Unmarshal(raw, &v) != nil || enc.Encode(v) != nil {
		return string(raw)
	}
	return strings.TrimSpace(b.String())
}

func newJobsCancelCmd(e *env) *cobra.Command {
	var f *clientFlags
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job",
		Args:  cobra.MatchAll(jobIDCount(1), jobIDArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			j, err := c.Cancel(ctx, args[0])
			if err != nil {
				return f.explain(e, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"job_id": j.ID, "state": string(j.State)})
			}
			if j.State != client.StateCanceled {
				// Running and not stopped yet: the worker ends it shortly.
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "job %s is %s; cancel requested\n", termSafe(j.ID), termSafe(string(j.State)))
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "job %s canceled\n", termSafe(j.ID))
			return err
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	return cmd
}

func newJobsWatchCmd(e *env) *cobra.Command {
	var f *clientFlags
	cmd := &cobra.Command{
		Use:   "watch [ID]",
		Short: "Follow a job's state changes live (all jobs without ID)",
		Long: "Follow a job's state changes until it ends, or every job's until interrupted. Uses foreman's\n" +
			"NATS listener when --nats-url (FOREMAN_CLIENT_NATS_URL) reaches it, else polls. The job may take\n" +
			"as long as it takes; a foreman that leaves a read of it unanswered for --timeout ends the watch.",
		Args: cobra.MatchAll(jobIDCount(0), jobIDArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			c, err := f.client(cmd, e, client.WithAnswerTimeout(f.timeout))
			if err != nil {
				return err
			}
			defer c.Close()
			if id != "" {
				f.timeoutHint = goesOn(termSafe(id))
			}
			events, why, err := c.WatchWhy(cmd.Context(), id)
			if err != nil {
				return f.explain(e, err)
			}
			out := cmd.OutOrStdout()
			var last client.Event
			for ev := range events {
				last = ev
				if f.json {
					b, err := json.Marshal(ev)
					if err == nil {
						_, err = out.Write(termJSON(append(b, '\n')))
					}
					if err != nil {
						return err
					}
					continue
				}
				line := fmt.Sprintf("%s  %s  %-8s  %s", ev.At.Local().Format("15:04:05"), termSafe(ev.JobID), termSafe(string(ev.State)), termSafe(ev.Model))
				if ev.Attempt > 1 {
					line += fmt.Sprintf("  attempt %d", ev.Attempt)
				}
				if ev.Error != "" {
					line += "  " + termSafe(ev.Error)
				}
				if _, err := fmt.Fprintln(out, line); err != nil {
					return err
				}
			}
			if id != "" && !last.State.Terminal() && cmd.Context().Err() != nil {
				// Interrupted (Ctrl-C) before the job ended: not a success, for a script that
				// goes on when the watch of its job does (`jobs watch "$ID" && ...`).
				seen := "no state seen yet"
				if last.State != "" {
					seen = "last seen " + termSafe(string(last.State))
				}
				return fmt.Errorf("interrupted before job %s ended (%s)", termSafe(id), seen)
			}
			// The watch gave up (see client.Watch): on the error of the read that ended it
			// (refused for good, or unanswered for --timeout).
			if cmd.Context().Err() == nil {
				if err := why(); err != nil {
					return f.explain(e, err)
				}
				if id == "" {
					return errors.New("the watch of every job ended")
				}
			}
			return nil
		},
	}
	f = addClientFlags(cmd, true)
	f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().Lookup("timeout").Usage = "give up when foreman has not answered a read of the job within this long (0: wait for ever); the job itself may take as long as it takes"
	return cmd
}

// jobIDCount refuses other than one job ID (at most one when least is 0), in words of
// the ID: cobra's were "accepts 1 arg(s), received 0".
func jobIDCount(least int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) >= least && len(args) <= 1 {
			return nil
		}
		want, got := "one job ID", "none"
		if least == 0 {
			want = "at most one job ID"
		}
		if len(args) > 0 {
			got = strconv.Itoa(len(args))
		}
		return usageError(cmd, fmt.Errorf("%s takes %s, got %s", cmd.CommandPath(), want, got))
	}
}

// jobIDArgs refuses an empty job id: `jobs watch "$ID"` with ID unset would follow every
// job, and `get`/`cancel` would ask for a path that is no job's.
func jobIDArgs(_ *cobra.Command, args []string) error {
	for _, a := range args {
		if strings.TrimSpace(a) == "" {
			return errors.New("the job id is empty")
		}
	}
	return nil
}
