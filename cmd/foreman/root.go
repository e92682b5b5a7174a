package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// env is how commands read the environment, so tests can give their own.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// now is the clock for ages in tables; nil means time.Now. Tests fix it.
	now func() time.Time
	// ctx is the context a command runs in, ended also by SIGINT and SIGTERM; nil means
	// context.Background. Tests end it as an interrupt would.
	ctx context.Context
	// stopNow is closed by a second SIGINT or SIGTERM, after the one that ended ctx: serve
	// cuts its graceful shutdown short (run sets it).
	stopNow <-chan struct{}
}

func (e *env) clock() time.Time {
	if e.now != nil {
		return e.now()
	}
	return time.Now()
}

// execute runs the CLI and returns the process exit code; only main calls os.Exit.
func execute(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	return run(&env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: getenv}, args)
}

// run is execute with a ready env (tests bring their own clock and streams).
func run(e *env, args []string) int {
	root := newRootCmd(e)
	root.SetArgs(args)
	base := e.ctx
	if base == nil {
		base = context.Background()
	}
	ctx, stopNow, caught, stop := interrupts(base)
	defer stop()
	e.stopNow = stopNow
	cmd, err := root.ExecuteContextC(ctx)
	if err != nil && cmd != nil && strings.HasPrefix(err.Error(), "unknown command ") {
		err = usageError(cmd, err) // cobra's, for a command (or argument) it does not know
	}
	err = sayInterrupted(ctx, cmd, err)
	if err != nil {
		// Every command's error is escaped for the terminal here, whatever it quotes (the
		// body of a refusal a bench met, a transport error): clientFlags.explain does so
		// for the client's errors already, and escaping escaped text changes nothing. Its
		// lines stay lines: errors.Join puts each of several bad settings on its own.
		fmt.Fprintln(e.stderr, "foreman: "+termText(strings.TrimSpace(err.Error())))
		return exitCode(cmd, caught())
	}
	return 0
}

// sayInterrupted is err, an error the interrupt that ended ctx left and that no command
// said in its words (a bench's request), as "interrupted": Go's "context canceled" read
// as a fault of foreman's. serve's error after a stop is its own (a shutdown cut short).
func sayInterrupted(ctx context.Context, cmd *cobra.Command, err error) error {
	if errors.Is(err, context.Canceled) && ctx.Err() != nil && (cmd == nil || cmd.Annotations[handlesSignals] == "") {
		return errInterrupted
	}
	return err
}

// usageError is err, a command given wrongly, pointing at cmd's usage on its first line
// (before the suggestions cobra may add), rather than printing the usage itself.
func usageError(cmd *cobra.Command, err error) error {
	first, rest, _ := strings.Cut(err.Error(), "\n")
	if rest != "" {
		rest = "\n" + rest
	}
	return fmt.Errorf("%s (see %q)%s", first, cmd.CommandPath()+" --help", rest)
}

// handlesSignals marks a command (serve) whose exit status after SIGINT or SIGTERM is
// its own: a stop is its normal end (0), a shutdown cut short a failure (1).
const handlesSignals = "foreman/handles-signals"

// exitCode is the status of a command that failed after sig (nil: none was caught):
// 128 + the signal's number for a command that a SIGINT or SIGTERM interrupted, as
// shells expect of an interrupted command (130 after Ctrl-C), so that a script tells an
// interrupt from the command's own failure; else 1.
func exitCode(cmd *cobra.Command, sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok && (cmd == nil || cmd.Annotations[handlesSignals] == "") {
		return 128 + int(s)
	}
	return 1
}

// interrupts is base, ended by the first SIGINT or SIGTERM, and a channel closed by the
// second: an operator who stops foreman and then, seeing the shutdown wait for a
// running job, presses Ctrl-C again means "now". A third ends the process at once,
// should the shutdown cut short hang all the same (a store's disk that stalls): exit
// status 128 + the signal's number, as a shell shows a command its signal killed. It is
// ended so rather than by letting the signal's default action go: a foreman started
// with SIGINT ignored (a script's `foreman serve &`) catches the first two all the same
// (Notify undoes the ignore), and Go would give the ignore back, so the third did
// nothing. caught is the signal that ended ctx, nil before one; stop ends the watch.
func interrupts(base context.Context) (context.Context, <-chan struct{}, func() os.Signal, func()) {
	ctx, cancel := context.WithCancel(base)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	now, done := make(chan struct{}), make(chan struct{})
	var (
		mu    sync.Mutex
		first os.Signal
	)
	caught := func() os.Signal {
		mu.Lock()
		defer mu.Unlock()
		return first
	}
	end := func(sig os.Signal) {
		mu.Lock()
		first = sig
		mu.Unlock()
		cancel()
	}
	go func() {
		third := func(sig os.Signal) { os.Exit(exitCode(nil, sig)) }
		for _, step := range []func(os.Signal){end, func(os.Signal) { close(now) }, third} {
			select {
			case sig := <-sigs:
				step(sig)
			case <-done:
				return
			}
		}
	}()
	return ctx, now, caught, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "foreman",
		Short:         "A durable queue in front of one Ollama server",
		Long:          "foreman speaks Ollama's API, turns every chat and generate call into a durable job in NATS JetStream,\nand runs them against one Ollama machine one at a time, draining the loaded model first.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(usageError)               // subcommands inherit it
	root.CompletionOptions.DisableDefaultCmd = true // completion.go writes to the injected writer
	root.AddCommand(newServeCmd(e), newVersionCmd(e),
		newChatCmd(e), newSubmitCmd(e), newJobsCmd(e), newPsCmd(e), newTagsCmd(e), newQueueCmd(e), newTopCmd(e), newBenchCmd(e), newCompletionCmd(e))
	return root
}
