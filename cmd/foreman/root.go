package main

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"strings"
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
	ctx, stop := signal.NotifyContext(base, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(e.stderr, "foreman: "+strings.TrimSpace(err.Error()))
		return 1
	}
	return 0
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
	root.CompletionOptions.DisableDefaultCmd = true // completion.go writes to the injected writer
	root.AddCommand(newServeCmd(e), newVersionCmd(e),
		newChatCmd(e), newSubmitCmd(e), newJobsCmd(e), newPsCmd(e), newTagsCmd(e), newQueueCmd(e), newTopCmd(e), newBenchCmd(e), newCompletionCmd(e))
	return root
}
