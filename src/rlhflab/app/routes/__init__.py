"""The feedback app's routes, one ``APIRouter`` per area: signing in (``auth``), labelling
(``labelling``), reviewing a project's labels (``review``) and administration (``admin``).
Who may call each is in ``rlhflab.app.deps.ACCESS``."""
