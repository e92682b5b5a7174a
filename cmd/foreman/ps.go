package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

func newPsCmd(e *env) *cobra.Command {
	var f *clientFlags
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the models loaded on the Ollama server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			ps, err := c.Ps(ctx)
			if err != nil {
				return f.explain(e, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), ps)
			}
			now := e.clock()
			tw := newColumns(cmd.OutOrStdout(), 3)
			fmt.Fprintln(tw, "NAME\tID\tSIZE\tPROCESSOR\tUNTIL")
			for _, m := range ps.Models {
				until := humanTime(now, m.ExpiresAt, "Never")
				if !m.ExpiresAt.IsZero() && m.ExpiresAt.Before(now) {
					until = "Stopping..."
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", termSafe(m.Name), termSafe(shortDigest(m.Digest)), humanBytes(m.Size), processor(m), until)
			}
			return tw.Flush()
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	return cmd
}

// processor is where a model runs, as `ollama ps` shows it.
func processor(m client.ProcessModel) string {
	switch {
	case m.SizeVRAM == 0:
		return "100% CPU"
	case m.SizeVRAM >= m.Size:
		return "100% GPU"
	}
	cpu := float64(m.Size-m.SizeVRAM) / float64(m.Size) * 100
	return fmt.Sprintf("%d%%/%d%% CPU/GPU", int(cpu), 100-int(cpu))
}
