package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// defaultURL is where `foreman serve` listens by default (FOREMAN_ADDR).
const defaultURL = "http://127.0.0.1:8080"

// clientFlags are the flags every command that talks to a running foreman shares.
type clientFlags struct {
	url, token string
	json       bool
	// timeout bounds a command that asks foreman and prints the answer (addTimeout);
	// timeoutBy says what set it when that was not --timeout (live top's own bound), and
	// timeoutHint ends the message of a command that ran out of it, or that was
	// interrupted before foreman answered.
	timeout     time.Duration
	timeoutBy   string
	timeoutHint string
	// NATS, for the commands that follow jobs live.
	natsURL, natsUser, natsPassword string
}

// addClientFlags registers --url, --token and --json on cmd, and the NATS flags when
// withNATS is set.
func addClientFlags(cmd *cobra.Command, withNATS bool) *clientFlags {
	f := &clientFlags{}
	fs := cmd.Flags()
	fs.StringVar(&f.url, "url", "", "foreman's URL [FOREMAN_URL] (default "+defaultURL+")")
	fs.StringVar(&f.token, "token", "", "bearer token: foreman's FOREMAN_AUTH_TOKEN or one of its FOREMAN_AUTH_TOKENS [FOREMAN_TOKEN]"+secretFlagNote)
	fs.BoolVar(&f.json, "json", false, "print JSON for scripts")
	if withNATS {
		fs.StringVar(&f.natsURL, "nats-url", "", "foreman's NATS listener, to follow jobs live (polling without it) [FOREMAN_CLIENT_NATS_URL]")
		fs.StringVar(&f.natsUser, "nats-user", "", "NATS client user [FOREMAN_NATS_USER]")
		fs.StringVar(&f.natsPassword, "nats-password", "", "NATS client password [FOREMAN_NATS_PASSWORD]"+secretFlagNote)
	}
	return f
}

// defaultTimeout is --timeout's default: far above any answer of a foreman that works;
// submitTimeout is submit's, above the 30 s in which foreman answers a NATS submit;
// benchChatTimeout bounds each chat of `bench chat`, which may wait for a model's load,
// or behind other jobs, before its answer.
const (
	defaultTimeout   = 30 * time.Second
	submitTimeout    = time.Minute
	benchChatTimeout = 5 * time.Minute
)

// addTimeout registers --timeout on a command that asks foreman and prints its answer: a
// foreman that takes the connection and never answers (stopped, its store hung) would
// else hold it for ever. Commands that wait for a job by design take it for each request
// of their wait, not for the wait (client.WithAnswerTimeout, ADR-0133).
func (f *clientFlags) addTimeout(cmd *cobra.Command, def time.Duration) {
	cmd.Flags().DurationVar(&f.timeout, "timeout", def, "give up when foreman has not answered within this long (0: wait for ever)")
	cmd.PreRunE = func(*cobra.Command, []string) error {
		if f.timeout < 0 {
			return fmt.Errorf("--timeout: must be 0 (no limit) or more, got %s", f.timeout)
		}
		return nil
	}
}

// noAnswerJob is the job of a wait that err ended as foreman answered nothing within
// --timeout (client.NoAnswerError), else seen, the job the command saw; "" for another
// error.
func noAnswerJob(err error, seen string) string {
	var na *client.NoAnswerError
	if !errors.As(err, &na) {
		return ""
	}
	return termSafe(cmp.Or(na.JobID, seen))
}

// goesOn ends the message of a wait that gave up on foreman: its job is foreman's, and
// goes on.
func goesOn(id string) string {
	return fmt.Sprintf("; job %s goes on: foreman jobs watch %s follows it", id, id)
}

// bounded is cmd's context bounded by --timeout (checked in addTimeout's PreRunE).
func (f *clientFlags) bounded(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if f.timeout <= 0 {
		return context.WithCancel(cmd.Context())
	}
	return context.WithTimeout(cmd.Context(), f.timeout)
}

// perRequest is ctx bounded by --timeout, for one request of a command that makes many
// (a bench).
func (f *clientFlags) perRequest(ctx context.Context) (context.Context, context.CancelFunc) {
	if f.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, f.timeout)
}

// noAnswerWithin says that base gave no answer within limit (--timeout), and hint.
func noAnswerWithin(base string, limit time.Duration, hint string) string {
	return fmt.Sprintf("no answer from %s within %s (--timeout): %s", termSafe(base), limit, hint)
}

// pick returns the flag's value, else the variable's, else def.
func pick(flag string, e *env, name, def string) string {
	if flag != "" {
		return flag
	}
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

func (f *clientFlags) baseURL(e *env) string { return pick(f.url, e, "FOREMAN_URL", defaultURL) }

// client builds the client. A NATS URL that cannot be reached is not fatal: the command
// says so on stderr and polls instead.
func (f *clientFlags) client(cmd *cobra.Command, e *env, opts ...client.Option) (*client.Client, error) {
	base := f.baseURL(e)
	token := pick(f.token, e, "FOREMAN_TOKEN", "")
	if err := sendableToken(token, "no request could carry it"); err != nil {
		return nil, fmt.Errorf("--token/FOREMAN_TOKEN: %w", err) // else "cannot reach" foreman
	}
	opts = append([]client.Option{client.WithToken(token)}, opts...)
	if nu := pick(f.natsURL, e, "FOREMAN_CLIENT_NATS_URL", ""); nu != "" {
		var nopts []nats.Option
		if user := pick(f.natsUser, e, "FOREMAN_NATS_USER", ""); user != "" {
			nopts = append(nopts, nats.UserInfo(user, pick(f.natsPassword, e, "FOREMAN_NATS_PASSWORD", "")))
		}
		c, err := client.New(base, append(opts, client.WithNATSURL(nu, nopts...))...)
		if err == nil {
			return c, nil
		}
		// The error may quote the NATS server (its -ERR text): escaped.
		fmt.Fprintf(cmd.ErrOrStderr(), "foreman: %s; polling instead\n", termSafe(err.Error()))
	}
	c, err := client.New(base, opts...)
	if err != nil {
		return nil, fmt.Errorf("--url/FOREMAN_URL: %w", err)
	}
	return c, nil
}

// explain turns a client error into the one line a person needs, the server's text in it
// made safe for a terminal (termSafe).
func (f *clientFlags) explain(e *env, err error) error {
	if err == nil {
		return nil
	}
	var (
		ce  *client.ConnectionError
		cut *client.CutShortError
		ae  *client.APIError
		fe  *client.ForeignAnswerError
	)
	switch {
	case f.timeout > 0 && errors.Is(err, context.DeadlineExceeded):
		by := f.timeoutBy
		if by == "" {
			by = "--timeout"
		}
		why := "foreman or its job store may be hung"
		if na := (*client.NoAnswerError)(nil); errors.As(err, &na) && na.Instead != nil {
			// A proxy in front of foreman answered its page in foreman's place.
			why = fmt.Sprintf("what stands in front of foreman answered %d %s in its place (a proxy that cannot reach foreman, or had no answer from it in time): foreman may be down or hung",
				na.Instead.Status, http.StatusText(na.Instead.Status))
		}
		return fmt.Errorf("no answer from %s within %s (%s): %s; see its log and /healthz%s", ollama.RedactURL(f.baseURL(e)), f.timeout, by, why, f.timeoutHint)
	case errors.Is(err, context.Canceled):
		// Only an interrupt (Ctrl-C, SIGTERM) ends a command's context: Go's "context
		// canceled" read as a fault of foreman's.
		return errors.New(errInterrupted.Error() + f.timeoutHint)
	case errors.As(err, &ce):
		// A transport error may quote the server too (a certificate's names): escaped.
		return fmt.Errorf("cannot reach %s: %s — %s", termSafe(ce.URL), termSafe(rootCause(ce.Err)), unreachableHint(ce.Err))
	case errors.As(err, &cut):
		return fmt.Errorf("the answer from %s was cut short (%s): foreman stopped, or the connection to it broke; see its log", termSafe(cut.URL), termSafe(rootCause(cut.Err)))
	case errors.As(err, &fe):
		return foreignSuccess(termSafe(ollama.RedactURL(f.baseURL(e))), fe)
	case errors.As(err, &ae) && ae.Raw:
		return foreignAnswer(termSafe(ollama.RedactURL(f.baseURL(e))), ae)
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		// foreman's own message starts "unauthorized: " already; said once.
		msg := strings.TrimPrefix(ae.Message, "unauthorized: ")
		return fmt.Errorf("unauthorized: %s (set FOREMAN_TOKEN or --token)", termSafe(msg))
	case errors.As(err, &ae):
		return errors.New(termSafe(ae.Message))
	}
	if msg := err.Error(); termSafe(msg) != msg {
		// A job's error, a message from the server quoted in a decode error.
		return errors.New(termSafe(msg))
	}
	return err
}

// rootCause is the innermost transport error: "connection refused", not "dial tcp …".
func rootCause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sys *os.SyscallError
	if errors.As(err, &sys) {
		err = sys.Err
	}
	return err.Error()
}

// printJSON writes v indented, for --json, safe for a terminal (termJSON).
func printJSON(w io.Writer, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(termJSON(b.Bytes()))
	return err
}

// limitSet checks a --limit the user gave: 0 (the flag's default) would ask for the
// server's default page silently.
func limitSet(cmd *cobra.Command, limit int) error {
	if cmd.Flags().Changed("limit") && limit < 1 {
		return fmt.Errorf("--limit: must be at least 1, got %d", limit)
	}
	return nil
}
