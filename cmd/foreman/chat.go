package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newChatCmd(e *env) *cobra.Command {
	var (
		f           *clientFlags
		model       string
		system      string
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "chat -m MODEL [PROMPT]",
		Short: "Chat with a model through foreman's queue",
		Long: "Chat with a model through foreman's queue; the answer streams as it is generated.\n" +
			"The prompt comes from the arguments, else from stdin. When stdin is a terminal (or with -i)\n" +
			"the chat goes on turn after turn, keeping the conversation; /bye or end of input stops it.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if model == "" {
				return errors.New("a model is required: foreman chat -m MODEL [PROMPT]")
			}
			s := &chatSession{cmd: cmd, f: f, e: e, model: model}
			opts := []client.Option{client.WithAnswerTimeout(f.timeout)}
			if isTTY(cmd.ErrOrStderr()) {
				opts = append(opts, client.WithOnQueued(s.queued))
			}
			c, err := f.client(cmd, e, opts...)
			if err != nil {
				return err
			}
			defer c.Close()
			s.c = c
			if system != "" {
				s.history = append(s.history, client.Message{Role: "system", Content: system})
			}
			switch {
			case len(args) > 0:
				return s.turn(strings.Join(args, " "))
			case interactive || isTerminal(e.stdin):
				return s.repl()
			}
			prompt, err := readAll(cmd.Context(), e.stdin)
			if err != nil {
				return fmt.Errorf("read prompt from stdin: %w", err)
			}
			if strings.TrimSpace(string(prompt)) == "" {
				return errors.New("no prompt: give it as an argument or on stdin")
			}
			return s.turn(strings.TrimSpace(string(prompt)))
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	cmd.Flags().Lookup("timeout").Usage = "while the chat's answer is silent (its job waits in the queue), ask foreman every this long whether it still answers, and give up when it leaves such a check unanswered this long (0: no checks, wait for ever); the chat itself may wait as long as it takes"
	cmd.Flags().StringVarP(&model, "model", "m", "", "model to chat with (required)")
	cmd.Flags().StringVar(&system, "system", "", "system message")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "chat turn after turn even when stdin is not a terminal")
	return cmd
}

// chatSession is one conversation: its history is sent with every turn.
type chatSession struct {
	cmd     *cobra.Command
	c       *client.Client
	f       *clientFlags
	e       *env
	model   string
	history []client.Message

	// status shows the turn's place in the queue on stderr (a terminal) until its answer
	// starts.
	mu     sync.Mutex
	status *queueStatus
}

// queued is the client's WithOnQueued hook: the turn's job waits in the queue.
func (s *chatSession) queued(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		s.status = startQueueStatus(s.cmd.Context(), s.cmd.ErrOrStderr(), s.c, id)
	}
}

// answered ends the queue status of the turn.
func (s *chatSession) answered() {
	s.mu.Lock()
	st := s.status
	s.status = nil
	s.mu.Unlock()
	st.Stop()
}

// turn sends one user message and streams the answer to stdout as it arrives.
func (s *chatSession) turn(prompt string) error {
	out := s.cmd.OutOrStdout()
	msgs := append(s.history, client.Message{Role: "user", Content: prompt})
	wrote := false // part of an answer is on stdout: an error ends its line first
	fn := func(r *client.ChatResponse) error {
		s.answered()
		if s.f.json || r.Message.Content == "" {
			return nil
		}
		wrote = true
		_, err := io.WriteString(out, termText(r.Message.Content))
		return err
	}
	reply, err := s.c.Chat(s.cmd.Context(), client.ChatRequest{Model: s.model, Messages: msgs}, fn)
	s.answered()
	if err != nil {
		if wrote {
			fmt.Fprintln(out)
		}
		if id := noAnswerJob(err, ""); id != "" {
			// foreman cancels a chat's job once it sees its caller gone (ADR-0024).
			s.f.timeoutHint = fmt.Sprintf("; foreman cancels the chat's job %s once it sees the chat gone: foreman jobs watch %s shows how it ends", id, id)
		}
		return s.f.explain(s.e, err)
	}
	s.history = append(msgs, reply.Message)
	if s.f.json {
		return printJSON(out, reply)
	}
	_, err = fmt.Fprintln(out)
	return err
}

// repl reads a prompt per line until /bye or the end of input.
func (s *chatSession) repl() error {
	out := s.cmd.OutOrStdout()
	in := newLineReader(s.e.stdin, 1<<20)
	defer in.close()
	for {
		fmt.Fprint(out, ">>> ")
		text, ok, err := in.next(s.cmd.Context())
		if !ok {
			fmt.Fprintln(out)
			return err
		}
		line := strings.TrimSpace(text)
		switch line {
		case "":
			continue
		case "/bye", "/exit", "/quit":
			if !isTerminal(s.e.stdin) {
				// A terminal echoed the line's end; piped input did not: end the prompt's line.
				fmt.Fprintln(out)
			}
			return nil
		}
		if err := s.turn(line); err != nil {
			return err
		}
	}
}

// isTerminal reports whether r is an interactive terminal (a character device; /dev/null
// also is one, which just ends the chat at once).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
