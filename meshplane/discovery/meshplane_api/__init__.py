"""meshplane's own Kubernetes API (group meshplane.io, version v1alpha1).

One module per concern: `kinds.py` names the kinds (the table the CRDs, the reader, the source and
`meshplane convert` all walk), `objects.py` the parsed objects and the content value, `parse.py`
reads an object as the API server sends it with the policy files' own reader, `conditions.py` the
status owed as values, `resolve.py` turns the accepted objects into model content (last good
version per object, conflicts), `crds.py` generates the CustomResourceDefinitions from the policy
format's field table, `convert.py` turns policy files into documents of these kinds. `source.py`
(watching) and `status_writer.py` (writing status) are the Kubernetes source's. Importing the
package imports none of them.
"""
