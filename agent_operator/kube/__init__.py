"""The Kubernetes shell: Kopf handlers, the objects they create and how they read them back."""
