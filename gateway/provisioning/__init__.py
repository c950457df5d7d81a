"""Provisioning as AWS IoT does it: the template engine (pure, ``template``) and just-in-time registration and
provisioning of certificates from a CA registered with auto-registration (``jit``)."""
