package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newTagsCmd(e *env) *cobra.Command {
	var f *clientFlags
	cmd := &cobra.Command{
		Use:     "tags",
		Aliases: []string{"list", "ls"},
		Short:   "List the models installed on the Ollama server",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client(cmd, e)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.bounded(cmd)
			defer cancel()
			tags, err := c.Tags(ctx)
			if err != nil {
				return f.explain(e, err)
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), tags)
			}
			now := e.clock()
			tw := newColumns(cmd.OutOrStdout(), 3)
			fmt.Fprintln(tw, "NAME\tID\tSIZE\tMODIFIED")
			for _, m := range tags.Models {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", termSafe(m.Name), termSafe(shortDigest(m.Digest)), humanBytes(m.Size), humanTime(now, m.ModifiedAt, "Never"))
			}
			return tw.Flush()
		},
	}
	f = addClientFlags(cmd, false)
	f.addTimeout(cmd, defaultTimeout)
	return cmd
}
