"""Feature services: the exact feature set a model version was trained on."""

from feast import FeatureService
from feature_views import views

from shopguide.feature_spec import FEATURE_SERVICE

shopguide_model = FeatureService(name=FEATURE_SERVICE, features=list(views.values()))
