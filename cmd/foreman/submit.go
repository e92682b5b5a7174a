package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newSubmitCmd(e *env) *cobra.Command {
	var (
		f       *clientFlags
		model   string
		kind    string
		file    string
		wait    bool
		webhook string
		events  []string
		idemKey string
		prio    string
		program string
	)
	cmd := &cobra.Command{
		Use:   "submit -m MODEL [PROMPT | --file body.json]",
		Short: "Submit an async job and print its id (or wait for its result)",
		Long: "Submit an async job (POST /jobs) and print its id. The job is a chat with PROMPT (from the\n" +
			"arguments, else stdin), a generate or embed with --kind, or any POST /jobs body from --file\n" +
			"(\"-\" for stdin). With --wait, follow the job's state on stderr and print the result.",
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := submitRequest(cmd.Context(), e, model, kind, file, args)
			if err != nil {
				return err
			}
			req.WebhookURL, req.IdempotencyKey = webhook, idemKey
			req.Priority, req.Program = prio, program
			for _, ev := range events {
				req.WebhookEvents = append(req.WebhookEvents, client.State(ev))
			}
			c, err := f.client(cmd, e, client.WithAnswerTimeout(f.timeout))
			if err != nil {
				return err
			}
			defer c.Close()
			out := cmd.OutOrStdout()
			if !wait {
				ctx, cancel := f.bounded(cmd)
				defer cancel()
				id, err := c.SubmitAsync(ctx, req)
				if err != nil {
					return f.explain(e, err)
				}
				if f.json {
					return printJSON(out, map[string]string{"job_id": id})
				}
				_, err = fmt.Fprintln(out, termSafe(id))
				return err
			}
			return submitAndWait(cmd, c, f, e, req)
		},
	}
	f = addClientFlags(cmd, true)
	f.addTimeout(cmd, submitTimeout)
	cmd.Flags().Lookup("timeout").Usage = "give up when foreman has not answered the submit, or with --wait a read of the job, within this long (0: wait for ever); the job itself may wait as long as it takes"
	f.timeoutHint = "; the job may have been queued all the same (foreman jobs list): --idempotency-key makes a retry safe"
	fs := cmd.Flags()
	fs.StringVarP(&model, "model", "m", "", "model to run (required unless --file names one)")
	fs.StringVar(&kind, "kind", "chat", "job kind for PROMPT: chat, generate or embed")
	fs.StringVar(&file, "file", "", "a POST /jobs body (JSON file, - for stdin) instead of PROMPT")
	fs.BoolVar(&wait, "wait", false, "wait for the job, showing its states, then print the result")
	fs.StringVar(&webhook, "webhook", "", "URL that receives the job's state events (state_webhook_url)")
	fs.StringSliceVar(&events, "webhook-events", nil, "states sent to --webhook, e.g. done,failed (default all)")
	fs.StringVar(&idemKey, "idempotency-key", "", "a retried submit with the same key returns the first job")
	fs.StringVar(&prio, "priority", "", "the job's priority: high, normal or low (default: foreman's, normally normal)")
	fs.StringVar(&program, "program", "", "the submitting program's name (ignored by a foreman with named tokens)")
	return cmd
}

// submitRequest builds the job from --file or from the prompt.
func submitRequest(ctx context.Context, e *env, model, kind, file string, args []string) (client.SubmitRequest, error) {
	if file != "" {
		if len(args) > 0 {
			return client.SubmitRequest{}, errors.New("give a PROMPT or --file, not both")
		}
		var (
			body []byte
			err  error
		)
		if file == "-" {
			body, err = readAll(ctx, e.stdin)
		} else {
			body, err = os.ReadFile(file)
		}
		if err != nil {
			return client.SubmitRequest{}, fmt.Errorf("--file: %w", err)
		}
		if model != "" {
			if body, err = withModel(body, model); err != nil {
				return client.SubmitRequest{}, fmt.Errorf("--file %s: %w", file, err)
			}
		}
		return client.SubmitRequest{Body: body}, nil
	}
	if model == "" {
		return client.SubmitRequest{}, errors.New("a model is required: foreman submit -m MODEL PROMPT")
	}
	prompt := strings.Join(args, " ")
	if prompt == "" {
		in, err := readAll(ctx, e.stdin)
		if err != nil {
			return client.SubmitRequest{}, fmt.Errorf("read prompt from stdin: %w", err)
		}
		prompt = strings.TrimSpace(string(in))
	}
	if prompt == "" {
		return client.SubmitRequest{}, errors.New("no prompt: give it as an argument, on stdin, or use --file")
	}
	switch client.Kind(kind) {
	case client.KindChat:
		return client.SubmitRequest{Chat: &client.ChatRequest{Model: model, Messages: []client.Message{{Role: "user", Content: prompt}}}}, nil
	case client.KindGenerate:
		return client.SubmitRequest{Generate: &client.GenerateRequest{Model: model, Prompt: prompt}}, nil
	case client.KindEmbed:
		input, _ := json.Marshal(prompt)
		return client.SubmitRequest{Embed: &client.EmbedRequest{Model: model, Input: input}}, nil
	}
	return client.SubmitRequest{}, fmt.Errorf("--kind %q: want chat, generate or embed", kind)
}

// withModel sets "model" in a JSON object body (-m beats the file).
func withModel(body []byte, model string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return nil, errors.New("not a JSON object")
	}
	obj["model"], _ = json.Marshal(model)
	return json.Marshal(obj)
}

// submitAndWait runs the job synchronously: states on stderr, the result on stdout.
func submitAndWait(cmd *cobra.Command, c *client.Client, f *clientFlags, e *env, req client.SubmitRequest) error {
	errOut := cmd.ErrOrStderr()
	var last client.Event // the job's last state shown, for an interrupted wait
	// On a terminal a waiting job's position and ETA show on a line rewritten in place.
	var status *queueStatus
	defer func() { status.Stop() }()
	// A read of the job that fails (foreman restarting, or gone) is said once, until the
	// next state: the wait goes on, and should not look hung.
	failing := false
	req.OnWaitError = func(err error) {
		if !failing {
			failing = true
			status.Println(errOut, "foreman: "+f.explain(e, err).Error()+"; still waiting")
		}
	}
	req.OnState = func(ev client.Event) {
		failing = false
		if last.JobID == "" {
			status.Println(errOut, "job "+termSafe(ev.JobID))
		}
		last = ev
		line := termSafe(string(ev.State))
		if ev.Attempt > 1 {
			line += fmt.Sprintf(" (attempt %d)", ev.Attempt)
		}
		if ev.Error != "" {
			line += ": " + termSafe(ev.Error)
		}
		status.Println(errOut, line)
		if status == nil && isTTY(errOut) && (ev.State == client.StateQueued || ev.State == client.StateRetrying) {
			status = startQueueStatus(cmd.Context(), errOut, c, ev.JobID)
		}
	}
	req.SubmitTimeout = f.timeout // the submit only: the wait takes as long as the job
	res, err := c.Submit(cmd.Context(), req)
	status.Stop()
	var je *client.JobError
	if errors.As(err, &je) && f.json {
		_ = printJSON(cmd.OutOrStdout(), je.Job)
	}
	if errors.Is(err, context.Canceled) && last.JobID != "" {
		// Said as `jobs watch ID` says it; the job is foreman's and goes on.
		id := termSafe(last.JobID)
		return fmt.Errorf("interrupted before job %s ended (last seen %s): it goes on; foreman jobs watch %s follows it, foreman jobs cancel %s stops it",
			id, termSafe(string(last.State)), id, id)
	}
	if id := noAnswerJob(err, last.JobID); id != "" {
		f.timeoutHint = goesOn(id)
	}
	if err != nil {
		return f.explain(e, err)
	}
	out := cmd.OutOrStdout()
	if f.json {
		if res.Job.Result == nil && json.Valid(res.Body) {
			// A result too large for the record (and for GET /jobs/{id} to embed) came
			// as its artifact: the record printed carries it all the same.
			res.Job.Result = json.RawMessage(res.Body)
		}
		return printJSON(out, res.Job)
	}
	if text := res.Text(); text != "" {
		_, err = fmt.Fprintln(out, termText(text))
		return err
	}
	_, err = fmt.Fprintln(out, termText(strings.TrimSpace(string(res.Body))))
	return err
}
